"""How a run reads its data: the ``--data`` options, and what changes when it streams.

Streaming (``--streaming``, or automatic above :data:`~tunesmith.data.sources.AUTO_STREAM_BYTES`)
keeps memory bounded however large the data is:

- datasets are read as ``IterableDataset`` rows instead of being prepared whole first;
- cleaning remembers only the last :data:`DEDUP_WINDOW` kept records per side for duplicates
  and leaks (the cleaned file goes to disk as it is written);
- training reads back only the examples ``--max-steps`` consumes (``max_steps x batch_size x
  grad_accum x nproc``), and at most :data:`EVAL_LIMIT` eval examples unless ``--eval-limit``
  says otherwise. The length of a stream is not known up front, hence ``--max-steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunesmith.data.sources import ReadOptions, parse_columns, wants_streaming
from tunesmith.errors import ConfigError

if TYPE_CHECKING:
    from tunesmith.config import TrainConfig

DEDUP_WINDOW = 20_000
EVAL_LIMIT = 500


@dataclass(frozen=True)
class StreamPlan:
    """What the data step does for one run.

    Attributes:
        read_options: Split, revision, column mapping, streaming for the readers.
        dedup_window: The cleaner's window (None: every record is remembered).
        train_limit: Train examples read back after cleaning (None: all).
        eval_limit: Eval examples read back after cleaning (None: all).
    """

    read_options: ReadOptions
    dedup_window: int | None = None
    train_limit: int | None = None
    eval_limit: int | None = None

    @property
    def streaming(self) -> bool:
        return self.read_options.streaming


def stream_plan(cfg: TrainConfig) -> StreamPlan:
    """The data step's plan from the run config.

    Raises:
        ConfigError: streaming without ``--max-steps``.
        DataError: a ``--data`` entry names nothing that exists.
    """
    options = ReadOptions(cfg.data_split, cfg.data_revision, parse_columns(cfg.columns))
    specs = [*cfg.data, *([cfg.eval_data] if cfg.eval_data else [])]
    streaming = cfg.streaming
    if streaming is None and specs:  # auto: the size decides (resolved once, in preflight)
        streaming = wants_streaming([options.resolve(s) for s in specs], None)
    if not specs or not streaming:
        return StreamPlan(options)
    if cfg.max_steps is None:
        raise ConfigError(
            "streaming", True, "--max-steps with streamed data (its length is not known up front)"
        )
    options = ReadOptions(options.split, options.revision, options.columns, streaming=True)
    per_step = cfg.batch_size * cfg.grad_accum * cfg.nproc
    return StreamPlan(options, DEDUP_WINDOW, cfg.max_steps * per_step, cfg.eval_limit or EVAL_LIMIT)
