"""The trackers of one run: started together before training, isolated from it afterwards.

A tracker that cannot start (library missing, bad credentials, unreachable server) is a
:class:`~tunesmith.errors.UserInputError` before any step runs. Once training runs, a tracker
call that raises is reported once through ``say`` and that tracker is dropped: a tracker never
costs a run. Each tracker's run id goes to the run's ``trackers.json`` so ``--resume``
continues the same tracker runs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
from collections.abc import Callable
from typing import Any

from tunesmith.atomic import write_json
from tunesmith.errors import UserInputError
from tunesmith.rundir import RunDir
from tunesmith.track.base import Tracker, eval_table, metric_tags
from tunesmith.trackers import TRACKERS


def check_installed(names: list[str]) -> None:
    """Fail now, with the extra to install, when a chosen tracker's library is missing."""
    for name in names:
        _, library, extra = TRACKERS[name]
        if importlib.util.find_spec(library) is None:
            raise UserInputError(
                f"--report-to {name} needs the {library} package: pip install '{extra}'"
            )


class Trackers:
    """The started trackers of a run; every call reaches each tracker still alive."""

    def __init__(self, started: dict[str, Tracker], say: Callable[[str], None]):
        self.live = dict(started)
        self.say = say

    def __bool__(self) -> bool:
        return bool(self.live)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.live.items()):
            try:
                call(tracker)
            except Exception as exc:  # any library error: report, drop the tracker, go on
                self.say(
                    f"warning: tracker {name} failed ({what}: {_line(exc)}); training goes on without it"
                )
                del self.live[name]
                with contextlib.suppress(Exception):  # already broken; nothing more to save
                    tracker.finish()

    def log(self, row: dict[str, Any]) -> None:
        """A ``metrics.jsonl`` row (the loop's ``on_log`` hook, and the eval-loss row)."""
        step, tags = metric_tags(row)
        if tags:
            self._each("metrics", lambda t: t.log_metrics(tags, step))

    def log_eval(self, eval_json: dict[str, Any] | None) -> None:
        """The eval table (base vs tuned) of ``eval.json``."""
        if eval_json:
            table = eval_table(eval_json)
            self._each("eval table", lambda t: t.log_eval(table))

    def log_report(self, run: RunDir) -> None:
        """The report's plots as images or artifacts."""
        if plots := run.plots():
            self._each("plots", lambda t: t.log_images(plots))

    def finish(self) -> None:
        self._each("finish", lambda t: t.finish())
        self.live.clear()


def _line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_trackers(
    names: list[str],
    run: RunDir,
    config: dict[str, Any],
    *,
    resume_step: int | None = None,
    say: Callable[[str], None] = print,
) -> Trackers:
    """Start the named trackers for ``run``; with ``resume_step``, continue their runs.

    Args:
        names: Tracker names (:func:`~tunesmith.trackers.parse_report_to`).
        run: The run directory (``trackers.json`` is read on resume and written here).
        config: The resolved config, logged as hyperparameters.
        resume_step: The checkpoint step a resumed run continues from (None: a new run).
        say: Where warnings go.

    Raises:
        UserInputError: a tracker's library is missing or the tracker cannot start.
    """
    check_installed(names)
    saved: dict[str, Any] = {}
    if resume_step is not None and run.trackers_path.is_file():
        saved = json.loads(run.trackers_path.read_text())
    started: dict[str, Tracker] = {}
    for name in names:
        resumed = saved.get(name)
        if resumed is not None:
            resumed = {**resumed, "resume_step": resume_step}
        try:
            module = importlib.import_module(TRACKERS[name][0])
            started[name] = module.start(run, config, resumed)
        except Exception as exc:
            Trackers(started, say).finish()
            raise UserInputError(
                f"--report-to {name}: the tracker did not start: {_line(exc)}"
            ) from exc
    write_json(run.trackers_path, {**saved, **{n: t.state() for n, t in started.items()}})
    return Trackers(started, say)


def for_run(
    cfg, run: RunDir, resume_from, *, resumed: bool, say: Callable[[str], None]
) -> Trackers:
    """The trackers ``cfg.report_to`` names for a training run (none: an empty set).

    Args:
        cfg: The run's :class:`~tunesmith.config.TrainConfig`.
        run: Its run directory.
        resume_from: The checkpoint a resumed run continues from (None: from step 0).
        resumed: Whether this is ``--resume`` (the tracker runs in ``trackers.json`` continue).
        say: Where warnings go.
    """
    from tunesmith.trackers import parse_report_to

    names = parse_report_to(cfg.report_to)
    if not names:
        return Trackers({}, say)
    step = RunDir.checkpoint_step(resume_from) if resume_from is not None else 0
    config = cfg.model_dump(by_alias=True)
    return open_trackers(names, run, config, resume_step=step if resumed else None, say=say)
