"""What an export returns: the format, where it went and the checks that let it be published."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.export.verify import VerifyReport


@dataclass
class ExportResult:
    """What was written where, and the verification that let it be published."""

    format: str
    out: Path
    method: str
    verification: VerifyReport | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "out": str(self.out),
            "method": self.method,
            **self.detail,
            "verification": self.verification.to_dict() if self.verification else None,
        }
