"""`tunesmith compare --lr-search --quick` end to end on a tiny Llama (no mocks).

One search of lora and full on a small slice of the clinic demo, 6 steps a run, is shared by
the tests of this module; its grid's x20000 makes full fine-tuning diverge (lr 1) and is more
than the config allows for LoRA (lr 40), so both kinds of failure show. Then the same command
again, to show that finished runs are kept.
"""

import contextlib
import io
import json

import pytest

from tunesmith.cli import main
from tunesmith.compare.grid import lr_grid
from tunesmith.compare.search import SearchRun
from tunesmith.compare.winners import pick_best
from tunesmith.methods import get_method

pytestmark = pytest.mark.xdist_group("compare-e2e")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from tunesmith.demo.dataset import write_demo_files

    return write_demo_files(tmp_path_factory.mktemp("demo"), seed=0, n_train=96, n_eval=16)


def _argv(model, demo_files, out):
    raw, evals = demo_files
    return [
        "compare", "--methods", "lora,full", "--model", str(model), "--data", str(raw),
        "--eval-data", str(evals), "--output", str(out), "--lr-search", "--quick",
        "--search-steps", "6", "--lr-grid", "1,3,20000", "--batch-size", "4", "--eval-limit", "4",
        "--max-new-tokens", "6", "--logging-steps", "1", "--latency-runs", "2", "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def searched(tiny_llama_dir, demo_files, tmp_path_factory):
    """``(output dir, parsed --json stdout)`` of one search."""
    out = tmp_path_factory.mktemp("search") / "cmp"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(_argv(tiny_llama_dir, demo_files, out))
    assert code == 0
    return out, json.loads(stdout.getvalue())


def test_every_method_and_rate_ran_on_the_same_split(searched):
    out, printed = searched
    saved = json.loads((out / "compare.json").read_text())
    assert printed == saved
    runs = saved["search"]
    grid = (1, 3, 20000)
    for m in ("lora", "full"):
        tried = [r for r in runs if r["method"] == m]
        assert [r["lr"] for r in tried[:3]] == lr_grid(get_method(m).default_lr, grid)
        # --quick steps once past the grid's edge, here only downwards (x20000 never finishes),
        # exactly when the grid's best was its lowest rate
        scored = min(saved["settings"]["lr_search"]["validation_n"], 40)
        first = pick_best([SearchRun(**{**r, "best": False}) for r in tried[:3]], scored)
        extra = [r["multiplier"] for r in tried[3:]]
        assert extra == ([0.3333] if first.multiplier == 1.0 else [])
    s = saved["settings"]["lr_search"]
    assert (s["grid"], s["steps"], s["validation_limit"]) == ([1.0, 3.0, 20000.0], 6, 40)
    assert s["extensions"] == 1
    assert 0.0 <= s["base_validation_metric"] <= 1.0
    validation = (out / "search" / "validation.jsonl").read_text().splitlines()
    assert len(validation) == s["validation_n"] >= 8
    for r in runs:
        if r["multiplier"] > 3:
            continue
        assert r["status"] == "ok" and 0.0 <= r["validation_metric"] <= 1.0
        assert r["validation_loss"] > 0 and r["forgetting"] is not None
        cfg = (out / r["method"] / f"lr-{r['lr']:g}" / "config.yaml").read_text()
        assert "fit.jsonl" in cfg and "validation.jsonl" in cfg and "max-steps: 6" in cfg
        ev = json.loads((out / r["method"] / f"lr-{r['lr']:g}" / "eval.json").read_text())
        assert ev["n"] == len(validation)  # scored on the validation split, not the test set


def test_failed_and_diverged_rates_are_kept_with_their_reason(searched):
    out, _ = searched
    runs = {
        (r["method"], r["multiplier"]): r
        for r in json.loads((out / "compare.json").read_text())["search"]
    }
    too_high = runs[("lora", 20000.0)]
    assert too_high["status"] == "failed" and "less than or equal to 1" in too_high["reason"]
    assert too_high["run_dir"] is None and not too_high["best"]
    blown = runs[("full", 20000.0)]
    assert blown["status"] == "diverged" and "diverg" in blown["reason"]
    logged = (out / "full" / "lr-1" / "metrics.jsonl").read_text().splitlines()
    assert len(logged) < 6  # stopped before its 6 steps


def test_rows_report_each_method_at_its_best_validation_rate_with_test_figures(searched):
    out, _ = searched
    saved = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in saved["rows"]}
    for m in ("lora", "full"):
        best = [r for r in saved["search"] if r["method"] == m and r["best"]]
        assert len(best) == 1 and rows[m]["lr"] == best[0]["lr"]
        test = json.loads((out / m / f"lr-{best[0]['lr']:g}" / "test_eval.json").read_text())
        assert test["n"] == 4  # the test set, cut to --eval-limit
        assert rows[m]["execution_accuracy"] == test["metrics"]["adapted"]["execution_accuracy"]
        assert rows[m]["latency_ms"] > 0
    assert rows["base"]["general_perplexity"] > 1


def test_forgetting_plot_written_and_shown_in_the_report(searched):
    from tunesmith.report import write_report

    out, _ = searched
    png = (out / "compare_forgetting.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    html = write_report(out).read_text(encoding="utf-8")
    assert 'alt="compare_forgetting"' in html and 'alt="compare"' in html


def test_a_second_call_trains_only_what_an_interruption_left(searched, tiny_llama_dir, demo_files):
    """As if stopped during full's second rate: its run is half there and not recorded."""
    out, _ = searched
    state_path = out / "search" / "state.json"
    state = json.loads(state_path.read_text())
    cut = out / "full" / "lr-0.00015"
    n_past_edge = sum(r["multiplier"] < 1 for r in state["runs"])  # all finish: lower rates
    state["runs"] = [r for r in state["runs"] if r["run_dir"] != str(cut)]
    state_path.write_text(json.dumps(state))
    (cut / "eval.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/lr-*/eval.json")}
    stdout, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
        assert main(_argv(tiny_llama_dir, demo_files, out)) == 0
    assert len(before) == 3 + n_past_edge
    after = {p: p.stat().st_mtime_ns for p in out.glob("*/lr-*/eval.json")}
    assert {p: after[p] for p in before} == before and (cut / "eval.json") in after
    log = err.getvalue()
    assert log.count("done before (ok), kept") == 3 + n_past_edge
    assert "full lr 0.00015 (x3)" in log
    assert log.count("done before (diverged), kept") == 1
    assert log.count("done before (failed), kept") == 1
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["search"]) == 6 + n_past_edge and all(
        r["status"] == "ok" for r in saved["search"][:2]
    )
