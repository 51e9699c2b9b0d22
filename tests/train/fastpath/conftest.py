"""The fast paths' tests run with tunesmith's CPU kernels built, where they can be (``make``
builds them at install; a run of these tests alone builds them once, ~35 s)."""

from __future__ import annotations

import pytest

from tunesmith.train.fastpath import native


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels():
    """The built kernels module, or None where this machine cannot build them."""
    if native.buildable() is not None:
        return None
    native.build()
    return native.kernels()
