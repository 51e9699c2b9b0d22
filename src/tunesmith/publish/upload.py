"""Build the folder a push uploads (weights + model card), and upload it with ``HfApi``.

The folder is built with the same exports ``tunesmith export`` makes (verified), so what is
uploaded is exactly what ``export`` would write: the adapter (``peft``), a merged checkpoint
(``safetensors``) or one GGUF file, plus the generated ``README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.atomic import write_text
from tunesmith.errors import UserInputError, WorkFailed
from tunesmith.publish.card import model_card
from tunesmith.rundir import RunDir

KINDS = {"adapter": "peft", "merged": "safetensors", "gguf": "gguf"}


@dataclass(frozen=True)
class Staged:
    """The upload folder and its files (relative paths, bytes)."""

    folder: Path
    files: list[tuple[str, int]]


def stage(run_dir: str | Path, repo_id: str, out: str | Path, kind: str = "adapter") -> Staged:
    """Export the run as ``kind`` into ``out`` and write the model card beside it.

    Raises:
        UserInputError: not a run directory, an unknown kind, or ``out`` is not empty.
    """
    from tunesmith.export import export

    run = RunDir(run_dir)
    if not run.is_run():
        raise UserInputError(f"{run_dir} is not a tunesmith run directory")
    if kind not in KINDS:
        raise UserInputError(f"unknown push kind {kind!r}; one of {', '.join(KINDS)}")
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise UserInputError(f"{folder} is not empty; give an empty or new folder")
    target = folder / f"{repo_id.split('/')[-1]}.gguf" if kind == "gguf" else folder
    if kind == "gguf":
        folder.mkdir(parents=True, exist_ok=True)
    export(run.path, KINDS[kind], target)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "README.md", model_card(run, kind, repo_id))
    files = sorted(
        (str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file()
    )
    return Staged(folder, files)


def upload(staged: Staged, repo_id: str, *, private: bool = False, kept: bool = True) -> str:
    """Create ``repo_id`` (if needed) and upload the folder; returns the repo URL.

    Args:
        staged: The folder :func:`stage` built.
        repo_id: The model repository, ``org/name``.
        private: Create the repository private.
        kept: Whether the folder outlives the call (then a failure says where it is).

    Raises:
        WorkFailed: the hub cannot be reached (offline, no network) or refused the upload.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(staged.folder), repo_id=repo_id)
    except Exception as exc:  # offline mode, network, auth: one line, the folder stays
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = f" (the folder is ready at {staged.folder})" if kept else ""
        raise WorkFailed(f"cannot upload to {repo_id}: {first}{where}") from exc
    return f"https://huggingface.co/{repo_id}"
