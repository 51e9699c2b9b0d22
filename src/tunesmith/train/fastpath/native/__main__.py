"""``python -m tunesmith.train.fastpath.native``: compile tunesmith's CPU kernels for this machine."""

from __future__ import annotations

import sys
import time

from tunesmith.train.fastpath import native


def main() -> int:
    why = native.buildable()
    if why is not None:
        print(f"tunesmith's CPU kernels are not built: {why}", file=sys.stderr)
        return 0  # nothing is wrong: training uses torch's ops
    start = time.perf_counter()
    try:
        where = native.build()
    except Exception as exc:  # noqa: BLE001 - the compiler's own output is above; one line here
        print(f"tunesmith's CPU kernels did not build: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    print(f"tunesmith's CPU kernels: {where} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
