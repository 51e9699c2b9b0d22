"""``python -m tunesmith.bench.dpo SPEC.json OUT.json``: one DPO bench variant in this process."""

import sys

from tunesmith import cpu_share

# Before torch loads: the tunesmith variant waits as ``tunesmith train`` does (its loop watches
# the cores); the parent gives the TRL variants libgomp's default, as a TRL user has.
cpu_share.configure(sample=False, watched=True)

from tunesmith.bench.dpo.runner import child_main  # noqa: E402

sys.exit(child_main(sys.argv[1:]))
