"""``tunesmith ui``: a local web app to launch, watch, compare and talk to runs.

A small FastAPI app (JSON endpoints and server-sent events) over the library, with a static
front end in ``static/`` (plain HTML, CSS and JavaScript; uPlot vendored for the charts).
Every fact comes from where the CLI keeps it: run state from :class:`~tunesmith.rundir.RunDir`,
validation from :mod:`tunesmith.config`, the plan from :mod:`tunesmith.plan`, chat from
:mod:`tunesmith.serve`. Modules: ``workspace`` (path confinement), ``runs`` (run summaries),
``forms`` (the config form and plan), ``jobs`` (training subprocesses), ``events`` (live
metrics), ``chat`` (the serve app per run), ``tools`` (data, compare, export) and ``app``.
"""

from __future__ import annotations

UPLOAD_LIMIT_BYTES = 256 * 1024**2  # one uploaded data file
