"""The trackers ``--report-to`` accepts, with the extra that installs each one's library.

Kept free of imports so :mod:`tunesmith.config` can validate ``--report-to`` cheaply.
"""

from __future__ import annotations

from tunesmith.errors import ConfigError

# name -> (module tunesmith drives it with, the library it needs, the extra that installs it)
TRACKERS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("tunesmith.track.to_tensorboard", "tensorboard", "tunesmith[tensorboard]"),
    "wandb": ("tunesmith.track.to_wandb", "wandb", "tunesmith[wandb]"),
    "mlflow": ("tunesmith.track.to_mlflow", "mlflow", "tunesmith[mlflow]"),
    "trackio": ("tunesmith.track.to_trackio", "trackio", "tunesmith[trackio]"),
}


def parse_report_to(text: str) -> list[str]:
    """``"tensorboard, wandb"`` -> ``["tensorboard", "wandb"]``; ``none`` (or empty) -> ``[]``.

    Raises:
        ConfigError: an unknown tracker name, or ``none`` together with a tracker.
    """
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    allowed = "a comma list of " + ", ".join(TRACKERS) + ", or none"
    for name in names:
        if name not in TRACKERS:
            raise ConfigError("report-to", text, allowed)
    return list(dict.fromkeys(names))
