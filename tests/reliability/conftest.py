"""Shared inputs of the reliability tests: a small clean data file and run-dir helpers."""

from __future__ import annotations

import json

import pytest


def qa_records(n: int = 24) -> list[dict]:
    """Distinct question/answer records (no near-duplicates for the cleaner to drop)."""
    cities = ["Lyon", "Paris", "Nice", "Lille", "Brest", "Dijon"]
    cols = ["name", "city", "birth_year", "doctor_id"]
    return [
        {
            "instruction": f"List the {cols[i % 4]} of patients from {cities[i % 6]} (query {i}).",
            "output": f"SELECT {cols[i % 4]} FROM patients WHERE city = '{cities[i % 6]}' "
            f"LIMIT {i + 1};",
        }
        for i in range(n)
    ]


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_records()))
    return path
