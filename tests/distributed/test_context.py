"""``DistContext.close`` tears the process groups down, DeepSpeed's included (context.py)."""

import subprocess
import sys
import textwrap

import pytest

from tests.distributed.helpers import env, free_port

PROBE = textwrap.dedent(
    """
    import os, sys
    import deepspeed
    from deepspeed.utils import groups
    from tunesmith.distributed.context import DistContext

    def gloo_threads():
        task = f"/proc/{os.getpid()}/task"
        return sum(open(f"{task}/{t}/comm").read().startswith("pt_gloo") for t in os.listdir(task))

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    groups._clone_world_group()  # a group only DeepSpeed's module holds, as ZeRO's are
    before = gloo_threads()
    DistContext(mode=sys.argv[1], world_size=2).close()
    print(before, gloo_threads())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_close_ends_the_gloo_threads_of_deepspeeds_groups_too():
    pytest.importorskip("deepspeed")
    one_rank = dict(env(), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    one_rank["MASTER_PORT"] = str(free_port())
    proc = subprocess.run([sys.executable, "-c", PROBE, "deepspeed"], env=one_rank,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = map(int, proc.stdout.split()[-2:])
    # The world's and DeepSpeed's clone's worker threads (torch's destroy alone leaves the
    # clone's two running until the interpreter's shutdown).
    assert before > 0 and after == 0
