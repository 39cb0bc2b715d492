"""The value type every metric returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class MetricResult:
    """A metric's aggregate ``value`` plus its per-example values (if any) and extra details."""

    value: float | None
    per_example: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_array(values: np.ndarray | list[float], **extras: Any) -> "MetricResult":
        """Mean over examples, keeping the per-example values (as plain floats for JSON)."""
        arr = np.asarray(values, dtype=np.float64)
        value = float(arr.mean()) if arr.size else None
        return MetricResult(value, [float(v) for v in arr], dict(extras))
