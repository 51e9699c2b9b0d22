"""The pieces of `compare` that need no training: lr defaults, method lists, table, plot."""

import pytest

from tunesmith.compare import MethodRow, compare, lr_for, parse_methods
from tunesmith.compare.plot import label_offsets, render_compare_png
from tunesmith.compare.table import compare_table
from tunesmith.config import make_config
from tunesmith.errors import ConfigError, UserInputError


def test_every_method_has_a_default_lr_and_a_user_lr_wins():
    from tunesmith.methods import get_method, method_names

    methods = method_names()
    assert all(get_method(m).default_lr for m in methods)
    default = make_config({})
    assert [lr_for(m, default) for m in ("lora", "houlsby", "prefix", "ia3", "full")] == [
        2e-3, 1e-3, 3e-3, 1e-2, 5e-5,
    ]  # fmt: skip
    chosen = make_config({"lr": 3e-4})
    assert {lr_for(m, chosen) for m in methods} == {3e-4}
    # Typing the default value still counts as a choice.
    assert lr_for("full", make_config({"lr": 2e-4})) == 2e-4


def test_parse_methods_splits_dedupes_and_names_the_allowed():
    assert parse_methods("lora, full,lora") == ["lora", "full"]
    assert parse_methods(["lora,ia3", "prefix"]) == ["lora", "ia3", "prefix"]
    with pytest.raises(ConfigError) as err:
        parse_methods("lora,LoRA")
    assert "LoRA" in str(err.value) and "houlsby" in str(err.value)
    with pytest.raises(ConfigError):
        parse_methods(" , ")


def test_non_empty_output_is_refused_before_training(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(UserInputError, match="not empty"):
        compare("lora", base_config={"model": "/nonexistent"}, output=tmp_path)


def test_missing_data_file_is_refused_before_training(tmp_path):
    with pytest.raises(UserInputError, match="data file not found"):
        compare("lora", base_config={"data": [str(tmp_path / "no.jsonl")]}, output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


ROWS = [
    MethodRow(
        "lora",
        lr=2e-3,
        trainable_params=460_800,
        trainable_share=0.0034,
        task_metric=0.6,
        eval_perplexity=2.281,
        peak_mem_bytes=1_610_612_736,
        train_time_s=1234.5,
        tokens_per_s=12345.6,
        latency_ms=308.81,
        latency_vs_base=1.023,
    ),  # fmt: skip
    MethodRow("full", lr=5e-5, trainable_params=134_515_008, trainable_share=1.0, task_metric=0.62),
    MethodRow("qlora", lr=2e-3, error="OutOfMemoryError: CUDA out of memory"),
]


def test_table_fits_80_columns_and_lists_errors():
    from rich.console import Console

    con = Console(width=80, record=True)
    con.print(compare_table([MethodRow("base", task_metric=0.1), *ROWS], "execution_accuracy"))
    text = con.export_text()
    assert "…" not in text  # nothing cropped
    assert "0.34%" in text and "460.8K" in text and "134.5M" in text and "100%" in text
    assert "1.5 GiB" in text and "1234.5" in text and "308.8" in text and "1.02" in text
    assert "qlora failed: OutOfMemoryError: CUDA out of memory" in " ".join(text.split())


def test_plot_png_and_nothing_to_plot():
    png = render_compare_png(ROWS, "execution_accuracy", MethodRow("base", task_metric=0.1))
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert render_compare_png(ROWS[2:], "execution_accuracy") is None


def test_row_dict_names_the_task_metric():
    d = ROWS[0].to_dict("rouge_l")
    assert d["rouge_l"] == 0.6 and "task_metric" not in d


def test_an_interrupt_stops_the_whole_comparison(tmp_path, monkeypatch):
    """SIGTERM/Ctrl-C inside one method's run ends `compare`, not just that method."""
    from tunesmith.train.loop import Interrupted

    started = []

    def interrupted_run(cfg, **kw):  # stands in for a run that received SIGTERM mid-training
        started.append(cfg.method)
        raise Interrupted("stopped at step 3; checkpoint saved")

    monkeypatch.setattr("tunesmith.train.run.run_training", interrupted_run)
    with pytest.raises(Interrupted):
        compare("lora,houlsby,full", output=tmp_path / "o", say=lambda m: None)
    assert started == ["lora"]


def test_labels_of_coinciding_points_go_on_separate_lines():
    # lora and qlora: same parameters, 0.875 vs 0.883; houlsby far away in x; full far in y.
    xs = [460_800, 460_800, 2_400_000, 134_000_000, 460_800]
    ys = [0.875, 0.883, 0.883, 0.917, 0.50]
    assert label_offsets(xs, ys) == [-7.0, 5.0, 5.0, 5.0, 5.0]  # qlora, higher, on top
    assert label_offsets([10, 10, 10], [0.5, 0.5, 0.5]) == [5.0, -7.0, -19.0]
