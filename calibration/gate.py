"""The INT8 calibration gate: which metrics are gated, the allowed worsening of each, and the verdict.

    failures = check_gate(fp32_metrics, int8_metrics, GateThresholds.parse("depth=0.01,miou=0.02"))

:func:`~.calibrate.calibrate_bundle` refuses the INT8 bundle (:class:`CalibrationGateError`) when
:func:`check_gate` returns any failure, unless forced. Pure Python: no model or runtime is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import CalibrationReport


@dataclass(frozen=True)
class GateMetric:
    """A gated metric: its key in ``evaluate_perception``'s output and whether higher is better.

    ``optional``: gated only when the FP32 evaluation reports it (the object-pixel metrics; every shapes-world
    evaluation does, a caller's own whole-image metrics need not).
    """

    key: str
    higher_is_better: bool
    unit: str = ""
    optional: bool = False


#: The gate's metrics, by their ``--max-drop`` names. The ``object_*`` ones score the object pixels only (instance
#: id > 0): the floor and walls carry the whole-image numbers, so INT8 could ruin the objects unnoticed without them.
GATE_METRICS: dict[str, GateMetric] = {
    "depth": GateMetric("depth_delta1", True),
    "normal": GateMetric("normal_mean", False, " deg"),
    "miou": GateMetric("seg_miou", True),
    "object_depth": GateMetric("object_depth_delta1", True, optional=True),
    "object_normal": GateMetric("object_normal_mean", False, " deg", optional=True),
    "object_miou": GateMetric("object_seg_miou", True, optional=True),
}


@dataclass(frozen=True)
class GateThresholds:
    """Largest allowed worsening per metric: delta1 drop, normal-error rise (degrees), mIoU drop; whole image and
    object pixels."""

    depth: float = 0.01
    normal: float = 1.0
    miou: float = 0.02
    object_depth: float = 0.01
    object_normal: float = 1.0
    object_miou: float = 0.02

    @classmethod
    def parse(cls, text: str) -> "GateThresholds":
        """``"depth=0.01,normal=1.0,miou=0.02,object_normal=1.0"`` (any subset; the rest keep their defaults)."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in GATE_METRICS:
                raise ValueError(f"bad --max-drop item {item!r}: expected NAME=VALUE with NAME in {list(GATE_METRICS)}")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"bad --max-drop value {value!r} for {name}: not a number") from None
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"--max-drop {name} must be a finite number >= 0, got {value!r}")
            values[name] = number
        return cls(**values)


@dataclass(frozen=True)
class GateFailure:
    """One metric that worsened by more than allowed."""

    metric: str
    fp32: float
    int8: float
    worsening: float  # positive = worse (drop for delta1 / mIoU, rise for the normal error)
    allowed: float

    def describe(self) -> str:
        unit = GATE_METRICS[self.metric].unit
        return (
            f"{self.metric} ({GATE_METRICS[self.metric].key}): {self.fp32:.4f} -> {self.int8:.4f}, worse by "
            f"{self.worsening:.4f}{unit} (allowed {self.allowed:.4f}{unit})"
        )


class CalibrationGateError(RuntimeError):
    """The INT8 bundle lost too much accuracy; nothing was written. ``failures`` and ``report`` say what."""

    def __init__(self, failures: Sequence[GateFailure], report: "CalibrationReport"):
        self.failures = list(failures)
        self.report = report
        lines = "\n  ".join(f.describe() for f in self.failures)
        super().__init__(
            f"INT8 calibration refused: accuracy dropped beyond the gate\n  {lines}\n"
            "nothing was written; try another --method, more --samples, or --force to write it anyway"
        )


def check_gate(fp32: Mapping[str, float], int8: Mapping[str, float], thresholds: GateThresholds) -> list[GateFailure]:
    """The gated metrics that worsened by more than ``thresholds`` (a non-finite INT8 metric always fails).

    Raises ``KeyError`` when a gated metric is missing: a required one from either evaluation, an optional one
    (``GateMetric.optional``) from the INT8 evaluation while the FP32 one has it.
    """
    failures = []
    for name, metric in GATE_METRICS.items():
        if metric.optional and metric.key not in fp32:
            continue
        if metric.key not in fp32 or metric.key not in int8:
            raise KeyError(f"gate metric {metric.key!r} is missing from the evaluation")
        before, after = float(fp32[metric.key]), float(int8[metric.key])
        worsening = before - after if metric.higher_is_better else after - before
        allowed = getattr(thresholds, name)
        if not math.isfinite(after) or worsening > allowed:
            failures.append(GateFailure(name, before, after, worsening if math.isfinite(worsening) else math.inf, allowed))
    return failures
