"""Environment switches: on unless set to an off word, read again whenever the value changes."""

from __future__ import annotations

import pytest

from tunesmith import switches
from tunesmith.switches import Switch

NAME = "TUNESMITH_TEST_SWITCH"


@pytest.fixture(params=["store", "environ"])
def switch(request, monkeypatch):
    """A switch reading CPython's store behind os.environ, and one reading os.environ."""
    if request.param == "environ":
        monkeypatch.setattr(switches, "_store", None)
    monkeypatch.delenv(NAME, raising=False)
    return Switch(NAME)


def test_unset_is_on(switch):
    assert switch() is True
    assert switch() is True


@pytest.mark.parametrize("value", ["0", "off", "false", "no", " OFF ", "No", "FALSE\n"])
def test_off_words(switch, monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    assert switch() is False


@pytest.mark.parametrize("value", ["1", "on", "yes", "", "2", "offline"])
def test_other_values_are_on(switch, monkeypatch, value):
    monkeypatch.setenv(NAME, value)
    assert switch() is True


def test_a_change_between_calls_takes_effect(switch, monkeypatch):
    assert switch()
    monkeypatch.setenv(NAME, "0")
    assert not switch()
    assert not switch()  # the parsed value kept
    monkeypatch.setenv(NAME, "1")
    assert switch()
    monkeypatch.setenv(NAME, "0")
    assert not switch()
    monkeypatch.delenv(NAME)
    assert switch()


def test_equal_value_set_again_is_read_again(switch, monkeypatch):
    monkeypatch.setenv(NAME, "off")
    assert not switch()
    monkeypatch.setenv(NAME, "o" + "ff")  # another object, the same text
    assert not switch()


def test_the_fast_paths_switches_are_switches(monkeypatch):
    from tunesmith.train.fastpath import kernel_choice, native, row_split

    for module in (native, row_split, kernel_choice):
        assert isinstance(module.enabled, Switch) and module.enabled.name == module.ENV
        monkeypatch.setenv(module.ENV, "0")
        assert not module.enabled()
        monkeypatch.delenv(module.ENV)
        assert module.enabled()
