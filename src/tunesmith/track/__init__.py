"""Experiment trackers (``--report-to``): TensorBoard, Weights & Biases, MLflow, Trackio.

Each tracker is one small module driving that tracker's own library (an optional extra);
:class:`~tunesmith.track.session.Trackers` starts the chosen ones before training (a tracker
that cannot start is an error then) and isolates them afterwards (one that fails mid-run is
logged and dropped; training goes on). See docs/tracking.md.
"""

from tunesmith.track.session import Trackers, open_trackers
from tunesmith.trackers import TRACKERS, parse_report_to

__all__ = ["TRACKERS", "Trackers", "open_trackers", "parse_report_to"]
