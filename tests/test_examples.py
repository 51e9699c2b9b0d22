"""Every example config in examples/ loads and validates."""

from pathlib import Path

import pytest

from tunesmith.config import load_yaml, make_config
from tunesmith.methods import method_names

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path):
    raw = load_yaml(path)
    cfg = make_config(raw)
    assert cfg.method in method_names()
    # File names follow <model>_<method>.yaml, or <model>_compare.yaml for `tunesmith compare`,
    # which sets the method itself and, without an lr, each method's own default rate.
    kind = path.stem.rsplit("_", 1)[1]
    if kind == "compare":
        assert "method" not in raw and "lr" not in raw
    else:  # <model>_<objective>.yaml for a preference run (e.g. smollm2_dpo.yaml)
        assert kind in (cfg.method, cfg.objective)
