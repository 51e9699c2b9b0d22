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
    cfg = make_config(load_yaml(path))
    assert cfg.method in method_names()
    # File names follow <model>_<method>.yaml.
    assert path.stem.rsplit("_", 1)[1] == cfg.method
