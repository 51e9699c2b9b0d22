"""Upload a run to the Hugging Face Hub with a generated model card.

Pushes the adapter (default), a merged checkpoint (--merged) or a GGUF file (--gguf), built
exactly as `tunesmith export` builds them (verified), plus README.md: base model, method and
settings, data sources and sizes with the cleaning report, the eval table (base vs tuned) and
the command that reproduces the run. --dry-run builds the folder and lists what would be
uploaded without contacting the hub. Authentication is huggingface_hub's own (`hf auth login`
or HF_TOKEN).

Example:
  tunesmith push runs/demo my-org/smollm2-clinic-lora
  tunesmith push runs/demo my-org/smollm2-clinic --merged --dry-run -o push-folder
"""

from __future__ import annotations

import argparse

HELP = "upload an adapter, merged model or GGUF to the Hugging Face Hub with a model card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to publish")
    parser.add_argument("repo_id", metavar="org/name", help="the hub model repository")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--merged", action="store_true", help="push a merged checkpoint")
    kind.add_argument("--gguf", action="store_true", help="push one GGUF file")
    parser.add_argument(
        "--dry-run", action="store_true", help="build the folder and list it; upload nothing"
    )
    parser.add_argument(
        "-o",
        "--out",
        default=None,
        help="where to build the upload folder (default: a temporary folder; "
        "with --dry-run: ./push-<name>)",
    )
    parser.add_argument("--private", action="store_true", help="create the repository private")


def run(args: argparse.Namespace) -> int:
    import re
    import tempfile

    from tunesmith.errors import UserInputError
    from tunesmith.publish.upload import stage, upload

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo_id):
        raise UserInputError(f"repository id {args.repo_id!r}: expected org/name")
    kind = "merged" if args.merged else "gguf" if args.gguf else "adapter"
    name = args.repo_id.split("/")[-1]
    if args.dry_run or args.out:
        staged = stage(args.run_dir, args.repo_id, args.out or f"push-{name}", kind)
        _list(staged, args.repo_id, uploaded=not args.dry_run)
        if not args.dry_run:
            print(f"uploaded: {upload(staged, args.repo_id, private=args.private)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="tunesmith-push-") as tmp:
        staged = stage(args.run_dir, args.repo_id, f"{tmp}/{name}", kind)
        _list(staged, args.repo_id, uploaded=True)
        print(f"uploaded: {upload(staged, args.repo_id, private=args.private, kept=False)}")
    return 0


def _list(staged, repo_id: str, uploaded: bool) -> None:
    verb = "uploading" if uploaded else "would upload"
    print(f"{verb} {staged.folder} to {repo_id}:")
    for rel, size in staged.files:
        print(f"  {rel}  ({size:,} bytes)")
