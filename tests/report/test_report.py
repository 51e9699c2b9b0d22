"""report.html for a small synthetic run directory: plots, eval table, samples, missing files."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import pytest
import yaml
from PIL import Image

from tunesmith.cli import main
from tunesmith.errors import UserInputError
from tunesmith.report import write_report
from tunesmith.report.format import fmt_bytes, fmt_delta, fmt_seconds, fmt_value
from tunesmith.report.plots import ema, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(steps: int = 60, eval_every: int = 20) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        warm = min(1.0, step / 6)
        rows.append(
            {
                "step": step,
                "epoch": step / steps,
                "loss": 2.5 * math.exp(-step / 25) + 0.4 + 0.08 * math.sin(step * 1.7),
                "grad_norm": 3.0 / math.sqrt(step) + 0.2,
                "lr": 2e-4 * warm * 0.5 * (1 + math.cos(math.pi * step / steps)),
                "tokens_per_s": 900 + 40 * math.sin(step / 3),
                "peak_mem_bytes": 1_500_000_000 + step * 1_000_000,
                "elapsed_s": 1.5 * step,
            }
        )
        if step % eval_every == 0:
            rows.append({"step": step, "eval_loss": 2.0 * math.exp(-step / 30) + 0.6})
    return rows


EVAL = {
    "task": "clinic-sql",
    "n": 8,
    "model": "embedded",
    "adapter": "runs/demo/adapter",
    "metrics": {
        "base": {"execution_accuracy": 0.125, "exact_match": 0.0, "perplexity": 9.5},
        "adapted": {"execution_accuracy": 0.625, "exact_match": 0.25, "perplexity": 3.8},
    },
    "samples": [
        {
            "prompt": "How many patients live in Lyon?",
            "reference": "SELECT COUNT(*) FROM patients WHERE city = 'Lyon';",
            "base": "<script>alert(1)</script> I think there are many patients.",
            "adapted": "SELECT COUNT(*) FROM patients WHERE city = 'Lyon';",
        }
    ],
}
CONFIG = {"model": "embedded", "method": "lora", "target": "attn-qv", "rank": 8, "max-steps": 60}
PLAN = {
    "verdict": "fits",
    "total_bytes": 2_000_000_000,
    "budget_bytes": 16_000_000_000,
    "breakdown": {"weights": 1_200_000_000, "optimizer": 300_000_000, "activations": 500_000_000},
    "recommendation": {"batch-size": 8, "seq-len": 512},
}


def make_run_dir(path, complete: bool = True):
    """A run directory as train writes it; ``complete=False``: killed mid-training."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    rows = _metrics()
    if complete:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (path / "eval.json").write_text(json.dumps(EVAL))
        (path / "plan.json").write_text(json.dumps(PLAN))
        (path / "adapter").mkdir(exist_ok=True)
        (path / "adapter" / "adapter_config.json").write_text("{}")
    else:
        # Twelve rows, then a line cut off by the kill.
        text = "".join(json.dumps(r) + "\n" for r in rows[:12])
        (path / "metrics.jsonl").write_text(text + '{"step": 13, "lo')
    return path


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_has_plots_eval_table_config_and_plan(tmp_path):
    run = make_run_dir(tmp_path / "lora-demo")
    out = write_report(run)
    assert out == run / "report.html"
    html = out.read_text(encoding="utf-8")

    images = _images(html)
    assert len(images) == 4  # loss, lr, grad-norm, tokens/s
    for png, name in zip(images, ("loss", "lr", "grad_norm", "tokens_per_s"), strict=True):
        assert png.startswith(PNG_MAGIC)
        assert (run / f"{name}.png").read_bytes() == png  # the same plot saved beside the page
        assert Image.open(io.BytesIO(png)).size == (640, 360)

    # Eval table: each metric with base, adapted and a delta coloured by direction.
    assert "execution_accuracy" in html
    assert re.search(r"0\.125</td>.*?0\.625</td>.*?better\">\+0\.5 \(\+50\.0 pts\)", html, re.S)
    assert re.search(r"9\.5</td>.*?3\.8</td>.*?better\">-5\.7 \(-60\.0%\)", html, re.S)
    # Samples are escaped: model output cannot inject markup into the page.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html
    # Config, plan and header summary.
    assert "<code>max-steps</code>" in html and "attn-qv" in html
    assert 'class="badge fits"' in html and "1.9 GiB planned of a 14.9 GiB budget" in html
    assert "Recommended config" in html
    assert "best eval loss" in html and "1 min 30 s" in html  # elapsed 90 s at step 60
    assert "Incomplete run" not in html
    assert "https://" not in html and "http://" not in html  # no external assets


def test_report_for_a_run_killed_mid_training(tmp_path):
    run = make_run_dir(tmp_path / "killed", complete=False)
    html = write_report(run).read_text(encoding="utf-8")
    assert "Incomplete run" in html
    for missing in ("eval.json", "adapter", "plan.json"):
        assert f"<code>{missing}</code>" in html
    assert "not evaluated" in html
    assert len(_images(html)) == 4  # the twelve good rows are still plotted
    assert "Evaluation" not in html
    assert "12 / 60" in html  # steps chip: the last good row, out of max-steps


def test_report_with_only_a_config(tmp_path):
    run = tmp_path / "setup-failed"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    html = write_report(run).read_text(encoding="utf-8")
    assert "No metrics were logged" in html and not _images(html)
    assert "no training step was logged" in html


def test_report_rejects_non_run_dirs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="not a run directory"):
        write_report(empty)
    assert main(["report", str(empty)]) == 2
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = make_run_dir(tmp_path / "ok")
    assert main(["report", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"report": str((run / "report.html").resolve())}


def test_series_and_ema():
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": float("nan")}, {"step": 3}, {"loss": 4}]
    assert series(rows + [{"step": 4, "loss": 2.0}], "loss") == ([1.0, 4.0], [1.0, 2.0])
    # Debiased EMA, weight 0.8: (0.2*1) / 0.2 = 1; (0.8*0.2*1 + 0.2*2) / (1 - 0.64) = 1.5556.
    assert ema([1.0, 2.0]) == pytest.approx([1.0, 0.56 / 0.36])


def test_formatting():
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(512) == "512 B"
    assert fmt_seconds(42.25) == "42.2 s" and fmt_seconds(3725) == "1 h 2 min"
    assert fmt_value("peak_mem_bytes", 2**30) == "1.0 GiB"
    assert fmt_value("tokens_per_s", 1234.6) == "1235"
    assert fmt_value("train_time_s", 90) == "1 min 30 s"
    assert fmt_value("trainable_share", 0.0034) == "0.34%"
    assert fmt_delta("perplexity", 10.0, 12.0) == ("+2 (+20.0%)", "worse")
    assert fmt_delta("rouge_l", 0.5, 0.5) == ("+0 (+0.0 pts)", "same")
    assert fmt_delta("execution_accuracy", 0.1, 0.35) == ("+0.25 (+25.0 pts)", "better")
    assert fmt_delta("n_errors", 4, 1) == ("-3 (-75.0%)", "better")
    assert fmt_delta("eval_loss", 0.8, 0.4) == ("-0.4 (-50.0%)", "better")
    assert fmt_delta("rouge_l", None, 0.5) == ("—", "same")


def test_report_shows_compare_table_and_plot(tmp_path):
    run = make_run_dir(tmp_path / "compare")
    rows = [
        {
            "method": "lora",
            "trainable_params": 460_800,
            "execution_accuracy": 0.6,
            "peak_mem_bytes": 3 * 2**30,
        },
        {
            "method": "full",
            "trainable_params": 134_515_008,
            "execution_accuracy": 0.62,
            "train_time_s": 95,
        },
    ]
    (run / "compare.json").write_text(json.dumps({"steps": 60, "rows": rows}))
    fake_plot = _images(write_report(make_run_dir(tmp_path / "other")).read_text())[0]
    (run / "compare.png").write_bytes(fake_plot)
    html = write_report(run).read_text(encoding="utf-8")
    assert "Method comparison" in html
    assert "<td>lora</td>" in html and "460,800" in html and "134,515,008" in html
    assert "3.0 GiB" in html and "1 min 35 s" in html and "—" in html  # absent cells
    assert len(_images(html)) == 5 and fake_plot in _images(html)
