from tunesmith.cli import entry

entry()
