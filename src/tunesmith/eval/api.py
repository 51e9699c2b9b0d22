"""``tunesmith.evaluate``: base vs fine-tuned on held-out data, as one library call."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from tunesmith.data.records import Conversation
from tunesmith.errors import UserInputError


def eval_conversations(
    data: str | Path | None, run_dir: Path | None, limit: int | None
) -> list[Conversation]:
    """The eval set: ``data``, else the run's held-out split, else the demo's eval set."""
    from tunesmith.data.readers import read_files

    if data:
        path = Path(data)
    elif run_dir is not None and (run_dir / "data" / "train.eval.jsonl").is_file():
        path = run_dir / "data" / "train.eval.jsonl"
    else:
        from tunesmith.demo.dataset import demo_splits

        convs = demo_splits(seed=0)[1]
        return convs[:limit] if limit else convs
    if not path.is_file():
        raise UserInputError(f"eval data not found: {path}")
    convs = [c for c in read_files([path]) if isinstance(c, Conversation)]
    if not convs:
        raise UserInputError(f"{path}: no valid eval records")
    return convs[:limit] if limit else convs


def evaluate(
    source: str | Path | None = None,
    *,
    model: str | None = None,
    data: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    base: bool = True,
    forgetting: bool = True,
    out: str | Path | None = None,
    say=lambda m: None,
) -> dict[str, Any]:
    """Evaluate a run/adapter (and its base) and write ``eval.json``.

    Args:
        source: run directory or adapter directory; None evaluates ``model`` alone.
        model: base model override (default: the adapter's own base, or ``embedded``).
        data: eval file (default: the run's held-out split, or the demo eval set).
        limit: evaluate at most this many examples.
        batch_size: generation batch size.
        max_new_tokens: generation limit (default by task: 64 for the SQL demo, 256 otherwise).
        base: also evaluate the base model.
        forgetting: also measure perplexity on the bundled general-text set.
        out: where to write eval.json (default ``RUN_DIR/eval.json`` or ``./eval.json``).

    Returns:
        The eval.json object.
    """
    from tunesmith.atomic import write_json
    from tunesmith.core_watch import watching
    from tunesmith.eval.evaluate import eval_report, evaluate_side, perplexities
    from tunesmith.models import load_model_and_tokenizer
    from tunesmith.models.adapted import load_adapted, load_base

    run_dir = None
    art = None
    if source is not None:
        loaded = load_adapted(source, base_override=model)
        lm, tok, art = loaded.model, loaded.tokenizer, loaded.artifact
        # Only a run directory given as such supplies the held-out split and eval.json's home.
        run_dir = art.run_dir if art.run_dir == art.path else None
        model_name, adapter = loaded.base_model, str(art.dir)
    else:
        lm, tok, src = load_model_and_tokenizer(model or "embedded")
        model_name, adapter = src.display, None
    convs = eval_conversations(data, run_dir, limit)
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)

    def side_extra(m) -> dict[str, float]:
        return perplexities(m, tok, convs, forgetting=forgetting)

    base_side = adapted_side = None
    extra: dict[str, dict[str, float]] = {}
    if adapter is None or base:
        say(f"evaluating the base model on {len(convs)} examples ...")
        if art is not None and art.kind != "adapter":
            # Full, freeze or merged: the trained weights replaced the base's, load it apart.
            base_lm = load_base(art, base_override=model).model
            ctx = contextlib.nullcontext()
        else:
            base_lm = lm
            ctx = lm.disable_adapter() if adapter else contextlib.nullcontext()
        with ctx, watching(base_lm):
            base_side = evaluate_side(base_lm, tok, convs, **kw)
            extra["base"] = side_extra(base_lm)
    if adapter is not None:
        say(f"evaluating {adapter} ...")
        with watching(lm):  # on the cores other processes leave free (core_watch.py)
            adapted_side = evaluate_side(lm, tok, convs, **kw)
            extra["adapted"] = side_extra(lm)
    report = eval_report(
        convs, base_side, adapted_side, model=model_name, adapter=adapter, extra=extra
    )
    target = Path(out) if out else (run_dir / "eval.json" if run_dir else Path("eval.json"))
    write_json(target, report)
    report["path"] = str(target)
    return report
