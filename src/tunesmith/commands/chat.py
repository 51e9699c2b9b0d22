"""Talk to a model: the base, a run's adapter, or a merged checkpoint.

One-shot with `--prompt "..."` (prints the answer and exits), interactive otherwise
(type a message, empty line or Ctrl-D to quit, /reset to clear the history). Prompts are
rendered with the model's chat template, exactly as in training.
"""

from __future__ import annotations

import argparse

from tunesmith.commands._args import positive_int

HELP = "chat with the base model, an adapter or a merged model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        nargs="?",
        metavar="RUN_DIR|ADAPTER_DIR",
        help="fine-tuned result to load (omit for the base)",
    )
    p.add_argument(
        "--model",
        help="base model or merged checkpoint (default: the adapter's base, or 'embedded')",
    )
    p.add_argument("--prompt", help="one-shot: answer this and exit")
    p.add_argument(
        "--system", help="system message (default: the demo's, when chatting with a demo run)"
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=256, help="generation limit (default 256)"
    )
    p.add_argument("--json", action="store_true", help="one-shot answer as JSON on stdout")


def _system_prompt(args, run_dir) -> str | None:
    if args.system is not None:
        return args.system or None
    if run_dir is None:
        return None
    from tunesmith.demo.dataset import SYSTEM_PROMPT
    from tunesmith.rundir import RunDir

    try:
        cfg = RunDir(run_dir).config
    except Exception:
        return None
    return SYSTEM_PROMPT if not cfg.data else None


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from tunesmith.commands._console import quiet_libraries

    quiet_libraries()
    from tunesmith.core_watch import watching
    from tunesmith.data.records import Conversation
    from tunesmith.data.render import render_prompt
    from tunesmith.eval.generate import generate
    from tunesmith.models import load_model_and_tokenizer
    from tunesmith.models.adapted import load_adapted

    run_dir = None
    if args.source:
        loaded = load_adapted(args.source, base_override=args.model)
        model, tok, run_dir = loaded.model, loaded.tokenizer, loaded.artifact.run_dir
    else:
        model, tok, _ = load_model_and_tokenizer(args.model or "embedded")
    system = _system_prompt(args, run_dir)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def answer(message: str) -> str:
        history.append({"role": "user", "content": message})
        prompt = render_prompt(tok, Conversation.from_messages(history))
        with watching(model):  # on the cores other processes leave free (core_watch.py)
            out = generate(model, tok, [prompt], max_new_tokens=args.max_new_tokens, batch_size=1)
        text = out[0].text
        history.append({"role": "assistant", "content": text})
        return text

    if args.prompt is not None:
        text = answer(args.prompt)
        if args.json:
            json.dump({"prompt": args.prompt, "answer": text}, sys.stdout)
            print()
        else:
            print(text)
        return 0
    print("tunesmith chat — empty line or Ctrl-D quits, /reset clears the history", file=sys.stderr)
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not message:
            return 0
        if message == "/reset":
            del history[1 if system else 0 :]
            continue
        print("model> " + answer(message), flush=True)
