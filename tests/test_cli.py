"""How the ``tunesmith`` entry point exits (cli.py)."""

import subprocess
import sys

import pytest

from tests.distributed.helpers import env

LEAVE = (
    "import atexit, sys\n"
    "from tunesmith.cli import exit_process\n"
    "atexit.register(lambda: print('interpreter shutdown'))\n"
    "sys.stdout.write('saved')\n"  # no newline: only an explicit flush gets it out
    "exit_process(3)\n"
)


@pytest.mark.parametrize("world,shutdown", [("2", False), ("1", True)])
def test_a_rank_exits_without_the_interpreters_shutdown(world, shutdown):
    proc = subprocess.run([sys.executable, "-c", LEAVE], env=dict(env(), WORLD_SIZE=world),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 3
    assert proc.stdout.startswith("saved")
    assert ("interpreter shutdown" in proc.stdout) is shutdown
