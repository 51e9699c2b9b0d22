"""``tunesmith bench serve`` end to end on the tiny runs (a few requests, two levels)."""

from __future__ import annotations

import json


def test_bench_serve_reports_every_level_without_errors(serve_runs, tmp_path, capsys):
    from tunesmith.cli import main

    out = tmp_path / "serve.json"
    _, run_a, run_b = serve_runs
    argv = ["bench", "serve", str(run_a), str(run_b), "--concurrency", "1,4", "--requests", "4"]
    assert main(argv + ["--max-tokens", "4", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| one adapter | 4 |" in table and "| two adapters, mixed | 4 |" in table
    levels = json.loads(out.read_text())["levels"]
    assert [(lv["label"], lv["concurrency"]) for lv in levels] == [
        ("one adapter", 1),
        ("one adapter", 4),
        ("two adapters, mixed", 4),
    ]
    for lv in levels:
        assert lv["errors"] == 0 and lv["tokens_per_s"] > 0
        assert 0 < lv["ttft_p50_s"] <= lv["ttft_p95_s"] <= lv["e2e_p95_s"]
