"""Evaluate a fine-tuned model against its base on held-out data.

Task metrics come from greedy generations: execution accuracy and exact match for the clinic
text-to-SQL demo, exact match and ROUGE-L for other data. Also reported per side: perplexity
on the eval answers, forgetting (perplexity on a bundled general-text set; a rise means the
model lost general ability) and degeneration (share of generations that hit the length
limit, repeated 4-gram rate). Writes eval.json (into the run directory by default).
"""

from __future__ import annotations

import argparse

HELP = "evaluate base vs fine-tuned (task metrics, perplexity, forgetting) -> eval.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        metavar="RUN_DIR|ADAPTER_DIR",
        help="what to evaluate (omit to evaluate --model alone)",
    )
    p.add_argument(
        "--model",
        help="base model (default: the one the adapter was trained on; 'embedded' without a source)",
    )
    p.add_argument(
        "--data",
        help="eval file (default: the run's held-out split; the demo eval set without a run)",
    )
    p.add_argument("--limit", type=int, help="evaluate at most N examples")
    p.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="generation limit (default 64 for the SQL demo, 256 otherwise)",
    )
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--no-forgetting", action="store_true", help="skip general-text perplexity")
    p.add_argument("-o", "--out", help="eval.json path (default RUN_DIR/eval.json or ./eval.json)")
    p.add_argument("--json", action="store_true", help="print eval.json on stdout")


def _eval_data(args, run_dir):
    from pathlib import Path

    from tunesmith.data.readers import read_files
    from tunesmith.data.records import Conversation
    from tunesmith.errors import UserInputError

    if args.data:
        path = Path(args.data)
    elif run_dir is not None and (run_dir / "data" / "train.eval.jsonl").is_file():
        path = run_dir / "data" / "train.eval.jsonl"
    else:
        from tunesmith.demo.dataset import demo_splits

        return demo_splits(seed=0)[1][: args.limit] if args.limit else demo_splits(seed=0)[1]
    if not path.is_file():
        raise UserInputError(f"eval data not found: {path}")
    convs = [c for c in read_files([path]) if isinstance(c, Conversation)]
    if not convs:
        raise UserInputError(f"{path}: no valid eval records")
    return convs[: args.limit] if args.limit else convs


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    import sys
    from pathlib import Path

    from tunesmith.atomic import write_json
    from tunesmith.commands._console import console, eval_table, quiet_libraries

    quiet_libraries()
    from tunesmith.eval.evaluate import answer_perplexity, eval_report, evaluate_side
    from tunesmith.eval.general_text import general_texts, perplexity
    from tunesmith.models import load_model_and_tokenizer
    from tunesmith.models.adapted import load_adapted, locate

    out = console(stderr=args.json)
    run_dir = None
    if args.source:
        art = locate(args.source)
        run_dir = Path(args.source) if art.path != Path(args.source) else None
        model, tok, art = load_adapted(args.source, base_override=args.model)
        model_name, adapter = art.base_model, str(art.path)
    else:
        model, tok, src = load_model_and_tokenizer(args.model or "embedded")
        model_name, adapter, art = src.display, None, None
    convs = _eval_data(args, run_dir)
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def side_extra() -> dict[str, float]:
        extra = {"answer_perplexity": answer_perplexity(model, tok, convs)}
        if not args.no_forgetting:
            extra["general_perplexity"] = perplexity(model, tok, general_texts())
        return extra

    base = adapted = None
    extra: dict[str, dict[str, float]] = {}
    if adapter is None or not args.no_base:
        out.print(f"evaluating base on {len(convs)} examples ...")
        if adapter is not None and not hasattr(model, "disable_adapter"):
            # A fully trained model (full/freeze): the base is a separate load.
            trained = model
            model, _, _ = load_model_and_tokenizer(args.model or art.base_model)
        ctx = (
            model.disable_adapter()
            if hasattr(model, "disable_adapter")
            else contextlib.nullcontext()
        )
        with ctx:
            base = evaluate_side(model, tok, convs, **kw)
            extra["base"] = side_extra()
        if adapter is not None and not hasattr(model, "disable_adapter") and model is not trained:
            model = trained
    if adapter is not None:
        out.print(f"evaluating {adapter} ...")
        adapted = evaluate_side(model, tok, convs, **kw)
        extra["adapted"] = side_extra()
    report = eval_report(convs, base, adapted, model=model_name, adapter=adapter, extra=extra)
    target = (
        Path(args.out) if args.out else (run_dir / "eval.json" if run_dir else Path("eval.json"))
    )
    write_json(target, report)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        out.print(eval_table(report))
        out.print(f"wrote {target}")
    return 0
