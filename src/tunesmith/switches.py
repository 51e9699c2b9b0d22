"""On/off switches read from the environment (``TUNESMITH_NATIVE=0`` and kin), cheaply.

The CPU fast paths ask their switches on every call, ~1,700 times a training step, so that a
switch set between two calls (a test's ``monkeypatch.setenv``, an A/B run) takes effect at
the next call. ``os.environ.get`` costs ~0.8 µs a read (the key encoded, the value decoded),
~1.5 ms a step: 3% of a step of a 30-layer hidden-64 model, where little else is left (paired
A/B, benchmarks/RESULTS.md, "Switches read once per value, the gradient clip in two kernel
calls"). Here a switch reads CPython's own store behind ``os.environ`` (every write through
``os.environ``, ``monkeypatch.setenv`` included, goes through it; 0.1 µs) and parses a value
again only when it is another object than the last one parsed. Where that store is not there
(another Python), ``os.environ.get`` as before.
"""

from __future__ import annotations

import os

OFF = ("0", "off", "false", "no")
_UNSET = object()

# CPython's ``os.environ`` keeps its values in ``_data``, keyed by ``encodekey(name)``.
_store = getattr(os.environ, "_data", None)
_encode = getattr(os.environ, "encodekey", None)
if not (isinstance(_store, dict) and callable(_encode)):
    _store = None


class Switch:
    """An environment variable read as on (unset, or anything but :data:`OFF`) or off."""

    __slots__ = ("name", "_key", "_raw", "_on")

    def __init__(self, name: str):
        self.name = name
        self._key = _encode(name) if _store is not None else None
        self._raw: object = _UNSET
        self._on = True

    def __call__(self) -> bool:
        raw = _store.get(self._key) if _store is not None else os.environ.get(self.name)
        if raw is not self._raw:  # set, changed or removed since the last read
            text = os.environ.get(self.name, "1")
            self._on = text.strip().lower() not in OFF
            self._raw = raw
        return self._on
