"""tunesmith.cpu_share: the OpenMP wait setting is chosen before torch loads, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tunesmith import cpu_share


def _fresh_python(code: str, **env: str) -> str:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in (*cpu_share.USER_SETTINGS, cpu_share.AUTO_MARK)
    }
    return subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True,
        check=True, timeout=120,
    ).stdout.strip()  # fmt: skip


def test_busy_cpus_choose_the_shared_spin_count():
    assert cpu_share.choose_spin_count(None) == cpu_share.SPIN_ALONE
    assert cpu_share.choose_spin_count(0.1) == cpu_share.SPIN_ALONE
    assert cpu_share.choose_spin_count(1.0) == cpu_share.SPIN_SHARED
    assert cpu_share.SPIN_SHARED < cpu_share.SPIN_ALONE < 300_000  # libgomp's own default


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_busy_cores_is_a_share_of_the_machine():
    busy = cpu_share.busy_cores(0.05)
    assert busy is not None and 0.0 <= busy <= (os.cpu_count() or 1)


def test_import_sets_the_spin_count_before_torch_loads():
    code = "import os, tunesmith, torch; print(os.environ['GOMP_SPINCOUNT'], torch.get_num_threads() > 0)"
    assert _fresh_python(code) == f"{cpu_share.SPIN_ALONE} True"


def test_the_users_own_setting_wins():
    code = "import os, tunesmith; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _fresh_python(code, GOMP_SPINCOUNT="5") == "5"
    assert _fresh_python(code, OMP_WAIT_POLICY="PASSIVE") == "None"


def test_a_child_decides_again_from_what_it_sees(monkeypatch):
    """A value tunesmith chose is re-decided by the next process (the UI launching a training)."""
    code = (
        "import os; from tunesmith import cpu_share; "
        "cpu_share.busy_cores = lambda: 2.0; print(cpu_share.configure(), os.environ['GOMP_SPINCOUNT'])"
    )
    out = _fresh_python(code, GOMP_SPINCOUNT="10000", TUNESMITH_GOMP_AUTO="1")
    assert out.endswith(str(cpu_share.SPIN_SHARED)) and "shared" in out


def test_after_torch_loaded_nothing_changes(monkeypatch):
    import torch  # noqa: F401  (loaded: libgomp has read its settings)

    for name in (*cpu_share.USER_SETTINGS, cpu_share.AUTO_MARK):
        monkeypatch.delenv(name, raising=False)
    assert cpu_share.configure(sample=False) == "torch already loaded: libgomp's default"
    assert "GOMP_SPINCOUNT" not in os.environ
    assert cpu_share.described() == "libgomp default (GOMP_SPINCOUNT=300000)"


def test_a_watched_training_spins_longer_alone_and_as_short_when_shared():
    assert cpu_share.choose_spin_count(None, watched=True) == cpu_share.SPIN_WATCHED
    assert cpu_share.choose_spin_count(0.2, watched=True) == cpu_share.SPIN_WATCHED
    assert cpu_share.choose_spin_count(1.0, watched=True) == cpu_share.SPIN_SHARED
    assert cpu_share.SPIN_ALONE < cpu_share.SPIN_WATCHED < cpu_share.LIBGOMP_SPIN


def test_only_the_training_commands_are_watched():
    assert cpu_share.watched_command(["train", "examples/smollm2_lora.yaml"])
    assert cpu_share.watched_command(["compare", "--methods", "lora,ia3"])
    assert cpu_share.watched_command(["--debug", "train", "--resume", "runs/x"])
    assert not cpu_share.watched_command(["eval", "runs/x"])
    assert not cpu_share.watched_command(["serve", "--adapter", "train"])  # not the command
    assert not cpu_share.watched_command([])


def test_the_train_command_configures_before_torch_loads():
    code = (
        "import os, sys; from tunesmith import cli, cpu_share; cpu_share.busy_cores = lambda: 0.0; "
        "sys.argv = ['tunesmith', 'train', '--help']\n"
        "try:\n    cli.entry()\nexcept SystemExit:\n    pass\n"
        "print(os.environ['GOMP_SPINCOUNT'])"
    )
    assert _fresh_python(code).splitlines()[-1] == str(cpu_share.SPIN_WATCHED)


def test_libgomps_own_spin_count_is_named_as_its_default(monkeypatch):
    for name in (*cpu_share.USER_SETTINGS, cpu_share.AUTO_MARK):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", str(cpu_share.LIBGOMP_SPIN))  # a bench's TRL child
    assert cpu_share.described() == "libgomp default (GOMP_SPINCOUNT=300000)"
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert cpu_share.described() == "GOMP_SPINCOUNT=5 (set by the user)"
