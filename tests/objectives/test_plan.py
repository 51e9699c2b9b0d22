"""The planner's terms for a preference objective: two rows per example, and the reference."""

from __future__ import annotations

from dataclasses import replace

from tunesmith.config import make_config
from tunesmith.methods import get_method
from tunesmith.plan.analytic import StepSettings, step_terms
from tunesmith.plan.configs import bundled_config
from tunesmith.shape import model_shape
from tunesmith.train.guard import objective_plan_settings


def test_a_pair_plans_as_two_rows_and_the_reference_is_counted():
    shape = model_shape(bundled_config("qwen2.5-0.5b"))
    sft = StepSettings("lora", 4, 512)
    doubled = step_terms(shape, replace(sft, batch_size=8), 1, 1)
    pairs = step_terms(shape, replace(sft, sequences_per_example=2), 1, 1)
    live = step_terms(shape, replace(sft, sequences_per_example=2, reference="adapter-off"), 1, 1)
    base = step_terms(shape, sft, 1, 1)
    assert pairs.activations == doubled.activations > base.activations
    assert pairs.logits == doubled.logits
    assert live.total >= pairs.total and live.detail["reference_peak"] > 0
    assert (
        live.detail["saved_activations"] == pairs.detail["saved_activations"]
    )  # no_grad: saves nothing
    full = StepSettings("full", 4, 512, sequences_per_example=2)
    frozen = step_terms(shape, replace(full, reference="frozen-copy"), 10, 10)
    assert frozen.weights == 2 * step_terms(shape, full, 10, 10).weights


def test_run_config_picks_the_reference_the_run_uses():
    lora, full = get_method("lora"), get_method("full")
    assert objective_plan_settings(make_config({}), lora) == {}
    dpo = make_config({"objective": "dpo"})
    assert objective_plan_settings(dpo, lora) == {
        "sequences_per_example": 2,
        "reference": "adapter-off",
    }
    assert objective_plan_settings(dpo, full)["reference"] == "frozen-copy"
    assert objective_plan_settings(make_config({"objective": "simpo"}), lora)["reference"] == "none"
    kto = objective_plan_settings(make_config({"objective": "kto"}), lora)
    assert kto == {"sequences_per_example": 1, "reference": "adapter-off"}  # KL row: no_grad
    init = make_config({"objective": "dpo", "init-from": "runs/sft"})
    assert objective_plan_settings(init, lora)["reference"] == "cached"


def test_compare_shows_preference_accuracy():
    from rich.console import Console

    from tunesmith.compare.rows import MethodRow, base_row
    from tunesmith.compare.table import compare_table

    ev = {
        "task": "clinic-sql",
        "metrics": {"base": {"preference_accuracy": 0.5, "reward_margin": 0.0}},
    }
    base = base_row(ev, 100)
    tuned = MethodRow("lora", lr=1e-3, preference_accuracy=0.9, reward_margin=1.2)
    assert (
        base.preference_accuracy == 0.5
        and tuned.to_dict("execution_accuracy")["reward_margin"] == 1.2
    )
    console = Console(width=200, record=True)
    console.print(compare_table([base, tuned], "execution_accuracy"))
    text = console.export_text()
    assert "pref acc" in text and "0.900" in text
    console.print(compare_table([MethodRow("lora")], "execution_accuracy"))
    assert console.export_text().count("pref acc") == 0  # SFT-only tables are unchanged
