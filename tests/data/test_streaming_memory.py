"""A streamed dataset twice the size of a memory cap trains without exceeding the cap.

Each run is a real `tunesmith train` in its own process (tiny Llama), and its peak resident
memory (``ru_maxrss``) is compared with the same run on a small dataset: the extra memory the
big dataset costs must stay under the cap, which is half the dataset's size. The records'
bulk is a random ``meta`` payload (kept by cleaning, never tokenized), so the tiny model's
512-token context does not drop them. The same data without streaming exceeds the cap, which
shows the measurement can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.data.hub_fixtures import qa_rows

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny-e2e")]

CAP = 64 * 1024**2
_PAYLOAD = 65536
# Peak resident memory of this process image: VmHWM (ru_maxrss would carry over the forking
# pytest process's own peak across exec).
_RUN = (
    "import json, re, sys\n"
    "from tunesmith.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
    "print(json.dumps({'code': code, 'peak': int(hwm.group(1)) * 1024}))\n"
)


def _shards(folder, n):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = qa_rows(n)
    payload = [os.urandom(_PAYLOAD // 2).hex() for _ in range(n)]  # incompressible text
    table = pa.table(
        {
            "question": [r["question"] for r in rows],
            "answer": [r["answer"] for r in rows],
            "meta": [{"notes": p} for p in payload],
        }
    )
    (folder / "data").mkdir(parents=True)
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet", row_group_size=256)
    return folder


def _peak(tiny_llama_dir, data, out, *extra):
    args = [
        "train", "--model", str(tiny_llama_dir), "--data", str(data), "--output", str(out),
        "--columns", "instruction=question,output=answer", "--max-steps", "2",
        "--batch-size", "4", "--eval-limit", "2", "--max-new-tokens", "2", "--skip-base-eval",
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    return result["peak"]


def test_streamed_dataset_twice_the_cap_trains_within_it(tiny_llama_dir, tmp_path):
    small = _shards(tmp_path / "small", 64)
    big = _shards(tmp_path / "big", 2 * CAP // _PAYLOAD + 64)
    size = sum(p.stat().st_size for p in big.rglob("*.parquet"))
    assert size >= 2 * CAP
    baseline = _peak(tiny_llama_dir, small, tmp_path / "r0", "--streaming")
    streamed = _peak(tiny_llama_dir, big, tmp_path / "r1", "--streaming")
    print(
        f"dataset {size / 2**20:.0f} MiB; extra peak: streamed {(streamed - baseline) / 2**20:.1f} MiB"
    )
    assert streamed - baseline < CAP
    report = json.loads((tmp_path / "r1" / "data" / "clean_report.json").read_text())
    assert report["input_records"] == 2 * CAP // _PAYLOAD + 64  # every row went through cleaning
    whole = _peak(tiny_llama_dir, big, tmp_path / "r2", "--no-streaming")
    print(f"without streaming: +{(whole - baseline) / 2**20:.1f} MiB")
    assert whole - baseline > CAP  # without streaming the same data does not fit the cap
