"""Reading a run's resolved config outside the train workflow (chat, eval, the loader)."""

import pytest

from tunesmith.config import make_config, to_yaml
from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir


def test_read_run_config_round_trips_what_training_wrote(tmp_path):
    cfg = make_config({"method": "dora", "rank": 4, "trust-remote-code": True})
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert RunDir(tmp_path).config == cfg


def test_a_directory_without_config_is_not_a_run(tmp_path):
    with pytest.raises(UserInputError, match="not a tunesmith run directory"):
        RunDir(tmp_path).config
