"""The DPO bench's pairs: the clinic demo pairs, cleaned once, in TRL's conversational layout.

Both sides read the same file: tunesmith through its preference reader, TRL as a dataset of
``{"prompt", "chosen", "rejected"}`` message lists.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.bench.dpo.measure import DpoSettings


def prepare_pairs(workdir: Path, settings: DpoSettings) -> dict[str, str]:
    """Write the demo pairs, clean them as ``tunesmith train --objective dpo`` does, keep
    ``settings.n_pairs`` of them.

    Returns:
        ``{"pairs": path}``.
    """
    from tunesmith.atomic import write_jsonl
    from tunesmith.data.preference_clean import clean_preferences
    from tunesmith.demo.pairs import write_demo_pairs
    from tunesmith.errors import DataError

    workdir.mkdir(parents=True, exist_ok=True)
    # Twice the pairs needed: cleaning drops a few, and the rest stays untouched.
    paths = write_demo_pairs(workdir, seed=0, n_train=max(600, 2 * settings.n_pairs))
    train, held_out = (read_pairs(str(p)) for p in paths)
    kept, _report = clean_preferences(train, held_out)
    if len(kept) < settings.n_pairs:
        raise DataError(f"the demo has {len(kept)} clean pairs; the bench needs {settings.n_pairs}")
    out = workdir / "pairs.jsonl"
    write_jsonl(
        out,
        (
            {
                "prompt": [{"role": t.role, "content": t.content} for t in r.prompt],
                "chosen": [{"role": "assistant", "content": r.chosen}],
                "rejected": [{"role": "assistant", "content": r.rejected}],
            }
            for r in kept[: settings.n_pairs]
        ),
    )
    return {"pairs": str(out)}


def read_pairs(path: str) -> list:
    """The records of a pair file as tunesmith's preference records (invalid ones skipped)."""
    from tunesmith.data.preference import read_preference_file
    from tunesmith.data.validate import Invalid

    return [r for r in read_preference_file(path) if not isinstance(r, Invalid)]
