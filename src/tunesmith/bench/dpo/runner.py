"""The DPO bench's parent and child processes, on the training bench's runner.

Each variant runs in its own child process (``python -m tunesmith.bench.dpo SPEC OUT``,
through :func:`tunesmith.bench.train.runner.run_child`), in alternated rounds
(:func:`~tunesmith.bench.train.runner.alternate_rounds`).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunesmith.bench.dpo import trl_side
from tunesmith.bench.dpo.data import prepare_pairs
from tunesmith.bench.dpo.measure import DpoSettings
from tunesmith.bench.dpo.summary import summarize
from tunesmith.bench.train.runner import (
    alternate_rounds,
    machine_of,
    run_child,
    run_spec,
    set_threads,
)

VARIANTS: tuple[str, ...] = ("tunesmith", *trl_side.VARIANTS)
CHILD = "tunesmith.bench.dpo"  # the module each child runs (its __main__)


def child_main(argv: list[str]) -> int:
    """``python -m tunesmith.bench.dpo SPEC.json OUT.json``: one variant, one process."""
    from tunesmith.bench.dpo.tunesmith_side import run_tunesmith

    return run_spec(argv, DpoSettings, run_tunesmith, trl_side.run_trl)


def bench_dpo(
    settings: DpoSettings,
    *,
    reps: int = 1,
    variants: tuple[str, ...] = VARIANTS,
    workdir: Path | None = None,
    progress=None,
) -> dict[str, Any]:
    """Prepare the pairs once, then run ``reps`` alternated rounds of ``variants``.

    Returns:
        ``{"settings", "machine", "rows": [...], "summary": {...}}``.
    """
    say = progress or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-dpo-") as tmp:
        root = Path(workdir or tmp)
        say("preparing the clinic demo pairs ...")
        data = prepare_pairs(root / "data", settings)
        set_threads(settings.threads)  # machine_of() reports the threads the runs get
        rows = alternate_rounds(
            variants,
            reps,
            lambda variant, rep: run_child(
                variant, settings, data, root / f"{variant}-{rep}", module=CHILD
            ),
            say=say,
            label=f"{settings.steps} steps",
            extra=lambda row: f", DPO loss {row['final_train_loss']:.4f}",
        )
    return {
        "settings": asdict(settings),
        "machine": machine_of(rows),
        "rows": rows,
        "summary": summarize(rows),
    }
