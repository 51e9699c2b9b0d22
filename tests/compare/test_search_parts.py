"""The parts of `compare --lr-search` that need at most one tiny training run: the validation
split, the grid, the early stop of a diverging rate, the pick and the Pareto front."""

import json
import math

import pytest

from tunesmith.compare.grid import DEFAULT_GRID, diverging, lr_grid, next_rate, parse_grid
from tunesmith.compare.pareto import pareto_front, render_forgetting_png
from tunesmith.compare.search import SearchRun, SearchSettings
from tunesmith.compare.split import (
    MAX_VALIDATION,
    MIN_VALIDATION,
    split_validation,
    validation_size,
)
from tunesmith.compare.winners import pick_best
from tunesmith.errors import ConfigError, UserInputError


def _write_lines(path, n):
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(n)))
    return path


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    train = _write_lines(tmp_path / "train.jsonl", 300)
    a = split_validation(train, tmp_path / "a", seed=42)
    b = split_validation(train, tmp_path / "b", seed=42)
    c = split_validation(train, tmp_path / "c", seed=7)
    assert (a.n_fit, a.n_validation) == (270, 30)
    fit, val = a.fit.read_text().splitlines(), a.validation.read_text().splitlines()
    assert not set(fit) & set(val) and sorted(fit + val) == sorted(train.read_text().splitlines())
    assert val == b.validation.read_text().splitlines()  # same seed, same split
    assert val != c.validation.read_text().splitlines()
    assert [json.loads(x)["i"] for x in val] == sorted(json.loads(x)["i"] for x in val)


def test_split_size_bounds():
    assert validation_size(16) == MIN_VALIDATION
    assert validation_size(1000) == 100
    assert validation_size(10_000) == MAX_VALIDATION
    with pytest.raises(UserInputError, match="at least 16"):
        validation_size(15)


def test_validation_never_holds_a_test_question(tmp_path, tiny_llama_dir):
    """Cleaning keeps the test set apart from training; validation is carved from training."""
    from tunesmith.compare.search import clean_once
    from tunesmith.config import make_config
    from tunesmith.demo.dataset import write_demo_files

    raw, evals = write_demo_files(tmp_path / "demo", seed=0, n_train=96, n_eval=16)
    cfg = make_config({"model": str(tiny_llama_dir), "data": [str(raw)], "eval-data": str(evals)})
    train, test = clean_once(cfg, tmp_path / "search")
    split = split_validation(train, tmp_path / "search", cfg.seed)

    def prompts(path):
        return {
            m["content"]
            for line in path.read_text().splitlines()
            for m in json.loads(line)["messages"]
            if m["role"] == "user"
        }

    assert prompts(split.validation) and not prompts(split.validation) & prompts(test)
    assert not prompts(split.fit) & prompts(test)


def test_grid_is_a_log_grid_around_the_default():
    assert DEFAULT_GRID == (1 / 3, 1.0, 3.0)
    assert lr_grid(2e-3) == [6.67e-4, 2e-3, 6e-3]
    assert lr_grid(5e-5, parse_grid("0.3,1,3")) == [1.5e-5, 5e-5, 1.5e-4]
    assert parse_grid("3, 1,1") == (1.0, 3.0)
    for bad in ("", "a,1", "0,1", "-1", "inf"):
        with pytest.raises(ConfigError):
            parse_grid(bad)


def test_a_best_rate_on_the_grids_edge_asks_for_one_more_past_it():
    grid = DEFAULT_GRID
    assert next_rate([6.67e-4, 2e-3, 6e-3], 6e-3, grid) == 0.018  # top edge: x3
    assert next_rate([6.67e-4, 2e-3, 6e-3], 6.67e-4, grid) == 0.000222  # bottom edge: /3
    assert next_rate([6.67e-4, 2e-3, 6e-3], 2e-3, grid) is None  # inside: settled
    # a rate above the best that diverged counts as tried: never step into it again
    assert next_rate([2e-3, 6e-3, 0.018], 6e-3, grid) is None
    assert next_rate([1e-3, 2e-3, 0.1], 1e-3, (1, 2, 100)) == 0.0005  # the ratio at that edge
    assert next_rate([2e-3], 2e-3, (1.0,)) is None  # one rate asked for: no search to extend
    assert next_rate([2e-3, 6e-3], None, grid) is None  # nothing finished


def test_quick_settings_shorten_the_runs():
    quick = SearchSettings.quick(150)
    assert (quick.grid, quick.steps, quick.validation_limit) == (DEFAULT_GRID, 50, 40)
    assert (quick.extensions, SearchSettings().extensions) == (1, 2)
    assert SearchSettings.quick(20).steps == 20
    assert SearchSettings.quick(150, (1.0,), 7).steps == 7


def test_diverging_predicate():
    stop = diverging(warmup_steps=2)
    assert stop([2.0, 1.5, 1.2, 1.0, 0.9]) is None  # learning
    assert stop([2.0, 5.0, 9.0]) is None  # still in warm-up
    assert "diverging" in stop([2.0, 2.5, 3.5, 4.0, 4.5])
    assert stop([2.0, 2.1, 2.2, 2.4, 2.6]) is None  # a little worse: not clearly
    assert "nan" in stop([2.0, math.nan])


def test_an_absurd_learning_rate_on_a_tiny_model_is_stopped_early(tmp_path, tiny_llama_dir):
    """Full fine-tuning at lr 1 really diverges; the loop stops it before its 20 steps."""
    from tunesmith.config import make_config
    from tunesmith.train.run import run_training
    from tunesmith.train.signals import Diverged

    raw, evals = _demo(tmp_path)
    cfg = make_config(
        {"model": str(tiny_llama_dir), "method": "full", "lr": 1.0, "max-steps": 20,
         "batch-size": 4, "data": [str(raw)], "eval-data": str(evals), "eval-limit": 2,
         "logging-steps": 1, "output": str(tmp_path / "run")}
    )  # fmt: skip
    with pytest.raises(Diverged, match="diverging"):
        run_training(cfg, say=lambda m: None, stop_when=diverging(warmup_steps=1))
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 4 <= len(logged) < 20 and logged[-1]["loss"] > 1.5 * logged[0]["loss"]


def _demo(tmp_path):
    from tunesmith.demo.dataset import write_demo_files

    return write_demo_files(tmp_path / "demo", seed=0, n_train=48, n_eval=8)


def _run(method, lr, metric, loss=1.0, status="ok", forgetting=0.1):
    return SearchRun(method, lr, 1.0, status, validation_metric=metric, validation_loss=loss,
                     forgetting=forgetting)  # fmt: skip


def test_best_rate_is_the_best_validation_score_then_the_lower_loss():
    runs = [_run("lora", 1e-3, 0.8), _run("lora", 3e-3, 0.9, 1.2), _run("lora", 1e-2, 0.9, 1.1)]
    assert pick_best(runs).lr == 1e-2
    runs.append(_run("lora", 3e-2, None, status="diverged"))
    assert pick_best(runs).lr == 1e-2
    assert pick_best([_run("lora", 1.0, None, status="failed")]) is None


def test_a_metric_within_its_standard_error_of_the_best_ties_and_the_loss_decides():
    # the quick search's LoRA: 0.900 at 6e-3 is one question of 40 above 0.875 at 2e-3
    runs = [_run("lora", 2e-3, 0.875, 0.0225), _run("lora", 6e-3, 0.900, 0.0473)]
    assert pick_best(runs).lr == 6e-3  # without the count, only equal metrics tie
    assert pick_best(runs, scored=40).lr == 2e-3  # se(0.9, 40) = 0.047: a tie, lower loss
    assert pick_best(runs, scored=2000).lr == 6e-3  # se = 0.0067: 0.875 is clearly worse
    far = [_run("full", 5e-5, 0.775, 0.037), _run("full", 1.5e-4, 0.900, 0.029)]
    assert pick_best(far, scored=40).lr == 1.5e-4
    # at a perfect score the margin is one example, not zero
    perfect = [_run("lora", 1e-3, 1.0, 0.5), _run("lora", 3e-3, 0.975, 0.1)]
    assert pick_best(perfect, scored=40).lr == 3e-3


def test_pareto_front_keeps_the_undominated():
    pts = [(0.10, 0.84), (0.14, 0.91), (0.30, 0.86), (0.05, 0.50), (0.14, 0.80)]
    assert pareto_front(pts) == [3, 0, 1]
    assert pareto_front([(0.1, 0.5), (0.1, 0.5)]) == [0, 1]  # ties dominate neither


def test_forgetting_plot_is_a_png_and_needs_a_point():
    runs = [_run("lora", 2e-3, 0.8), _run("full", 5e-5, 0.9, forgetting=0.01)]
    runs[0].best = True
    png = render_forgetting_png(runs, "execution_accuracy", base_metric=0.0)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert render_forgetting_png([_run("lora", 1.0, None, status="diverged")], "rouge_l") is None


def test_help_states_the_grid_and_the_quick_settings(capsys):
    from tunesmith.cli import main
    from tunesmith.compare.search import QUICK_STEPS, QUICK_VALIDATION

    assert main(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "x {1/3, 1, 3}" in text and DEFAULT_GRID == (1 / 3, 1, 3)
    assert f"at most {QUICK_STEPS} steps per run and {QUICK_VALIDATION} validation" in text


@pytest.mark.parametrize("flag", [["--quick"], ["--lr-grid", "1,3"], ["--search-steps", "5"]])
def test_search_flags_without_lr_search_are_refused(flag, tmp_path, capsys):
    from tunesmith.cli import main

    out = tmp_path / "never"
    assert main(["compare", "--methods", "lora", "--output", str(out), *flag]) == 2
    assert "--lr-search" in capsys.readouterr().err and not out.exists()


def test_a_preference_objective_is_refused_before_the_output_is_made(tmp_path):
    from tunesmith.compare import compare

    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="objective"):
        compare("lora", base_config={"objective": "dpo"}, output=out, search=SearchSettings())
    assert not out.exists()


def test_search_table_marks_the_pick_and_says_why_a_rate_stopped():
    from rich.console import Console

    from tunesmith.compare.table import search_table

    runs = [_run("lora", 6.67e-4, 0.8), _run("lora", 2e-3, 0.9)]
    runs[1].best = True
    runs.append(SearchRun("lora", 6e-3, 3.0, "diverged", reason="loss nan"))
    console = Console(width=100, record=True)
    console.print(search_table(runs, "execution_accuracy"))
    text = console.export_text()
    assert "6.67e-04" in text and "val exec acc" in text and "0.900" in text
    assert "*" in text and "lora lr 6e-03 diverged: loss nan" in text


@pytest.mark.parametrize(
    ("peak", "extensions", "tried"),
    [
        (0.02, 2, [6.67e-4, 2e-3, 6e-3, 0.018, 0.054]),  # best on the edge twice: two more
        (0.02, 1, [6.67e-4, 2e-3, 6e-3, 0.018]),  # --quick: one more at most
        (0.007, 2, [6.67e-4, 2e-3, 6e-3, 0.018]),  # past the edge was worse: settled
        (2e-3, 2, [6.67e-4, 2e-3, 6e-3]),  # best inside the grid: nothing more
        (1e-4, 2, [6.67e-4, 2e-3, 6e-3, 0.000222, 7.4e-05]),  # downwards too
    ],
)
def test_the_search_steps_past_the_grids_edge_while_the_best_is_on_it(
    tmp_path, monkeypatch, peak, extensions, tried
):
    """The search's control flow alone: each run's validation score is a function of its rate
    (best at ``peak``) instead of a training, so which rates get tried is exact."""
    import tunesmith.compare.search as search
    from tunesmith.config import make_config

    def scored(build, run, say, progress, stop):
        run.validation_metric, run.validation_loss = -abs(math.log(run.lr / peak)), 1.0
        run.run_dir = str(tmp_path / f"lr-{run.lr:g}")
        return run

    train = _write_lines(tmp_path / "train.jsonl", 100)
    monkeypatch.setattr(search, "clean_once", lambda cfg, root: (train, tmp_path / "test.jsonl"))
    monkeypatch.setattr(search, "_train", scored)
    monkeypatch.setattr(search, "_base_side", lambda run_dir: {})
    monkeypatch.setattr(search, "evaluate_winners", lambda *args: None)
    cfg = make_config({"method": "lora", "max-steps": 10})
    settings = SearchSettings(extensions=extensions)
    said = []
    result = search.search_methods(["lora"], cfg, tmp_path / "out", settings, said.append)
    assert [r.lr for r in result.runs] == tried
    assert sum("on the grid's edge" in line for line in said) == len(tried) - 3
    assert result.settings["extensions"] == extensions
