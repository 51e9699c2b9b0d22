"""Worker processes change nothing but speed: same outputs and report as in-process."""

from __future__ import annotations

import json
import random

import pytest

from tunesmith.data.clean import clean
from tunesmith.errors import DataError


def _raw(path, n=700):
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(300)]
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(vocab) for _ in range(60))
        rows.append(json.dumps({"instruction": f"q {i}", "output": answer, "meta": {"i": i}}))
        if i % 10 == 0:
            rows.append(rows[-1])  # exact duplicate
        if i % 15 == 0:
            rows.append(
                json.dumps({"instruction": f"q {i}", "output": answer.replace(" ", " x ", 1)})
            )
        if i % 50 == 0:
            rows.append("{broken")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_workers_give_identical_results(tmp_path):
    src = _raw(tmp_path / "raw.jsonl")
    serial = clean([src], tmp_path / "a" / "t.jsonl", eval_share=0.1)
    parallel = clean([src], tmp_path / "b" / "t.jsonl", eval_share=0.1, workers=2)
    for r in (serial.report, parallel.report):
        r.pop("files"), r["options"].pop("workers")
    assert parallel.report == serial.report
    assert serial.report["near_duplicates"] > 0 and serial.report["exact_duplicates"] > 0
    for name in ("t.jsonl", "t.eval.jsonl", "clean_report.json"):
        a, b = (tmp_path / d / name for d in "ab")
        if name != "clean_report.json":
            assert a.read_bytes() == b.read_bytes()
    with pytest.raises(DataError, match=r"raw.jsonl:\d+: invalid JSON"):
        clean([src], tmp_path / "c" / "t.jsonl", workers=1, on_error="fail")
