"""The preference plan against two real preference steps, measured by PyTorch's profiler.

Each cell trains two steps through ``tunesmith train``'s own code (the objective's loss, the
log-prob path, the reference the run would use, the loop's clipped AdamW step) on a small
fp32 Llama built from its config, and compares the peak live bytes with
``step_terms(...).allocated`` for the settings the run plans with. Goal, as for the SFT plan's
CPU cells: predicted / measured within 0.95-1.15.
"""

from __future__ import annotations

import pytest

from tunesmith.bench.pref_memory import PrefCell, measure_cell, small_llama

pytestmark = pytest.mark.xdist_group("tiny-e2e")

CELLS = {
    "lora-dpo-adapter-off": PrefCell("lora", "dpo", batch_size=4, prompt_len=32, completion_len=96),
    "full-dpo-frozen-copy": PrefCell("full", "dpo", batch_size=4, prompt_len=32, completion_len=96),
    "lora-dpo-cached": PrefCell(
        "lora", "dpo", batch_size=4, prompt_len=32, completion_len=96, cached=True
    ),
    "lora-simpo-none": PrefCell("lora", "simpo", batch_size=4, prompt_len=32, completion_len=96),
    # KTO trains one row per example (its KL row runs without gradients): half a pair's rows.
    "lora-kto-adapter-off": PrefCell("lora", "kto", batch_size=4, prompt_len=32, completion_len=96),
    "full-kto-frozen-copy": PrefCell("full", "kto", batch_size=4, prompt_len=32, completion_len=96),
}
REFERENCES = {
    "lora-dpo-adapter-off": "adapter-off", "full-dpo-frozen-copy": "frozen-copy",
    "lora-dpo-cached": "cached", "lora-simpo-none": "none",
    "lora-kto-adapter-off": "adapter-off", "full-kto-frozen-copy": "frozen-copy",
}  # fmt: skip


@pytest.mark.parametrize("name", list(CELLS))
def test_preference_plan_matches_two_measured_steps(name):
    row = measure_cell(small_llama(), CELLS[name])
    assert row["reference"] == REFERENCES[name]  # the reference the run itself picks
    assert 0.95 <= row["ratio"] <= 1.15, row
