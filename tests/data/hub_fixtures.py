"""Datasets built inside a test and loaded through the same code path as a hub id.

Offline, ``datasets.load_dataset("org/name")`` finds a dataset in the local ``datasets``
cache (``HF_DATASETS_CACHE/org___name/<config>/<version>/<hash>/``); :func:`cache_as_hub`
writes that layout from rows, so ``--data org/name`` runs the hub path with no network.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def qa_rows(n: int, *, width: int = 1) -> list[dict]:
    """Distinct question/answer rows in non-standard columns (``question``, ``answer``)."""
    cities = ["Lyon", "Paris", "Nice", "Lille", "Brest", "Dijon", "Tours", "Metz"]
    cols = ["name", "city", "birth_year", "doctor_id"]
    filler = " ".join(f"w{j}" for j in range(width - 1))
    return [
        {
            "question": f"List the {cols[i % 4]} of patients from {cities[i % 8]} (query {i}). {filler}".strip(),
            "answer": f"SELECT {cols[i % 4]} FROM patients WHERE city = '{cities[i % 8]}' LIMIT {i + 1};",
        }
        for i in range(n)
    ]


def shard_folder(rows_by_split: dict[str, list[dict]], folder: Path) -> Path:
    """A folder of Parquet shards, as a dataset repository lays them out (``data/<split>-*``)."""
    from datasets import Dataset

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def cache_as_hub(
    rows_by_split: dict[str, list[dict]], repo_id: str, cache: Path, tmp: Path
) -> None:
    """Put a dataset into the ``datasets`` cache at ``cache`` as if ``repo_id`` was loaded once."""
    from datasets import load_dataset

    org, name = repo_id.split("/")
    src = shard_folder(rows_by_split, tmp / name)
    build = tmp / "build-cache"
    load_dataset(str(src), cache_dir=str(build))
    (prepared,) = [p for p in (build / name / "default" / "0.0.0").iterdir() if p.is_dir()]
    shutil.copytree(prepared, cache / f"{org}___{name}" / "default" / "0.0.0" / prepared.name)
