"""``python -m tunesmith.bench.train SPEC.json OUT.json``: one bench variant in this process."""

import sys

from tunesmith.bench.train.runner import child_main

sys.exit(child_main(sys.argv[1:]))
