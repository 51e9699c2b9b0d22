"""No module under src/ grows past 400 lines: split it along its ideas instead."""

from pathlib import Path

import tunesmith

LIMIT = 400


def test_no_module_is_over_the_limit():
    src = Path(tunesmith.__file__).parent
    long = {
        str(p.relative_to(src)): n
        for p in src.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert not long, f"modules over {LIMIT} lines: {long}"
