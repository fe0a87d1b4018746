"""The one record every load run produces, whichever tool measured it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measurement:
    value: float  # requests/s for request loads, MiB/s for streaming transfers
    unit: str  # "req/s" or "MiB/s"
    seconds: float
    requests: int
    errors: int  # socket errors, timeouts, non-2xx/3xx responses, short bodies
    error_detail: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    tool: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        return cls(**data)

    @classmethod
    def failed(cls, unit: str, tool: str, note: str) -> Measurement:
        return cls(0.0, unit, 0.0, 0, 1, {"failed": 1}, tool=tool, note=note)
