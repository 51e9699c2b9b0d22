"""Device budgets from names and sizes."""

from __future__ import annotations

import psutil
import pytest

from tunesmith.errors import ConfigError
from tunesmith.plan.gpus import GIB, device_budget_bytes


@pytest.mark.parametrize(
    "name, gib",
    [("24GB", 24), ("16GiB", 16), ("24", 24), ("rtx3090", 24), ("RTX4090", 24),
     ("a100-40gb", 40), ("a100-80gb", 80), ("h100", 80), ("h200", 141), ("l4", 24),
     ("t4", 16), ("a10g", 24), ("NVIDIA A100-80GB", 80)],
)  # fmt: skip
def test_named_and_sized_budgets(name, gib):
    assert device_budget_bytes(name) == gib * GIB


def test_cpu_budget_is_system_ram():
    assert device_budget_bytes("cpu") == psutil.virtual_memory().total
    assert device_budget_bytes(12345) == 12345


@pytest.mark.parametrize("bad", ["rtx9999", "lots", "-3GB"])
def test_unknown_device_names_the_key(bad):
    with pytest.raises(ConfigError, match="'gpu'"):
        device_budget_bytes(bad)
