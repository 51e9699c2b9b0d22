"""Config rules that decide what a run does when the user leaves a field unset."""

from __future__ import annotations

import pytest
import yaml

from tunesmith.config import make_config, resolve_lr, to_yaml
from tunesmith.errors import ConfigError
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


def test_the_default_recipe_is_every_linear_layer_at_rank_4_without_dropout():
    cfg = make_config({})
    assert (cfg.recipe, cfg.target, cfg.rank, cfg.alpha, cfg.dropout) == (
        "default", "all-linear", 4, 32.0, 0.0
    )  # fmt: skip
    assert not cfg.model_fields_set  # nothing set by the user: a resume reads the same back


def test_the_seed_recipe_is_the_original_lora_and_explicit_values_win():
    seed = make_config({"recipe": "seed"})
    assert (seed.target, seed.rank, seed.alpha, seed.dropout) == ("attn-qv", 8, 32.0, 0.05)
    mixed = make_config({"recipe": "seed", "rank": 16, "dropout": 0.0})
    assert (mixed.target, mixed.rank, mixed.alpha, mixed.dropout) == ("attn-qv", 16, 32.0, 0.0)
    # the YAML a run writes and a resume reads back gives the same run
    assert make_config(yaml.safe_load(to_yaml(mixed))) == mixed
    mixed.lr = 1e-3  # a later assignment does not bring the recipe's values back
    assert mixed.rank == 16


def test_a_config_from_before_recipes_keeps_its_values():
    """A run directory's config.yaml written before --recipe existed names every value."""
    old = make_config({"target": "attn-qv", "rank": 8, "alpha": 32, "dropout": 0.05})
    assert (old.recipe, old.target, old.rank, old.dropout) == ("default", "attn-qv", 8, 0.05)


def test_an_unknown_recipe_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="seed"):
        make_config({"recipe": "qv"})
