"""Config rules that decide what a run does when the user leaves a field unset."""

from __future__ import annotations

import yaml

from tunesmith.config import make_config, resolve_lr, to_yaml
from tunesmith.methods import get_method


def test_an_unset_lr_is_the_methods_own_for_supervised_runs():
    for method in ("lora", "dora", "full", "ia3", "houlsby", "prefix"):
        cfg = resolve_lr(make_config({"method": method}))
        assert cfg.lr == get_method(method).default_lr
        assert yaml.safe_load(to_yaml(cfg))["lr"] == cfg.lr  # the run's config: a resume keeps it


def test_a_chosen_lr_or_a_preference_run_keeps_its_rate():
    assert resolve_lr(make_config({"method": "lora", "lr": 1e-4})).lr == 1e-4
    assert resolve_lr(make_config({"method": "full", "lr": 2e-4})).lr == 2e-4  # the default's value
    dpo = resolve_lr(make_config({"method": "lora", "objective": "dpo"}))
    assert dpo.lr == 2e-4 and "lr" not in dpo.model_fields_set


def test_resolving_twice_changes_nothing():
    once = resolve_lr(make_config({"method": "lora"}))
    assert resolve_lr(once) == once
