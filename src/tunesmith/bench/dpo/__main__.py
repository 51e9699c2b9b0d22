"""``python -m tunesmith.bench.dpo SPEC.json OUT.json``: one DPO bench variant in this process."""

import sys

from tunesmith.bench.dpo.runner import child_main

sys.exit(child_main(sys.argv[1:]))
