"""``python -m tunesmith.train.fastpath.native``: compile tunesmith's CPU kernels for this machine."""

from __future__ import annotations

import sys
import time

from tunesmith.train.fastpath import native


def main() -> int:
    if native.buildable() is not None:
        print(f"tunesmith's CPU kernels are not built: {native.buildable()}", file=sys.stderr)
        return 0  # nothing is wrong: training uses torch's ops
    start = time.perf_counter()
    where = native.build()
    print(f"tunesmith's CPU kernels: {where} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
