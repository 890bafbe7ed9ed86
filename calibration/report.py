"""The calibration report: everything a calibration run measured and decided, as text, JSON and manifest entry.

:func:`~.calibrate.calibrate_bundle` fills a :class:`CalibrationReport`; the INT8 manifest's ``calibration`` field
holds its :meth:`~CalibrationReport.manifest_entry`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .gate import GATE_METRICS


@dataclass
class CalibrationReport:
    """Everything a calibration run measured and decided (goes, as ``to_dict()``, into the INT8 manifest)."""

    method: str
    samples: int
    steps: list[int]
    timesteps: list[float]
    records: int
    calibration_set_sha256: str
    calibration_images_sha256: str
    source_weights_sha256: str | None
    quantized_graphs: list[str]
    excluded_ops: dict[str, list[str]]
    quantized_nodes: int
    qdq_nodes: int
    ranges_cached: bool
    eval_scenes: int = 0
    eval_steps: int = 0
    fp32: dict[str, float] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)
    latent_error: list[dict[str, float]] = field(default_factory=list)
    exclusion_ablation: dict[str, dict[str, float]] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, float | str]] = field(default_factory=list)
    passed: bool = False
    forced: bool = False
    output: str | None = None
    target: str = "tensorrt"  # "tensorrt" (S8S8 Q/DQ) or "cpu" (uint8 x int8 integer operators)
    isa: dict[str, Any] = field(default_factory=dict)  # cpu_isa.CpuIsa.to_dict(): the CPU's U8S8 path (MLAS)
    cpu_form: dict[str, Any] = field(default_factory=dict)  # CPU target: scheme and cpu_target.CpuForm per graph

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_entry(self) -> dict[str, object]:
        """The manifest's ``calibration`` field: the headline facts, and the full report."""
        return {
            "method": self.method,
            "target": self.target,
            "isa": self.isa.get("path", "unknown"),
            "samples": self.samples,
            "steps": list(self.steps),
            "calibration_set_sha256": self.calibration_set_sha256,
            "source_weights_sha256": self.source_weights_sha256,
            "excluded_ops": self.excluded_ops,
            "report": self.to_dict(),
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"method       {self.method}, {self.samples} images x schedules K={self.steps} ({self.records} denoiser calls)",
            f"quantized    {', '.join(self.quantized_graphs)}: {self.quantized_nodes} nodes, {self.qdq_nodes} Q/DQ; "
            f"float: {', '.join(f'{g} ({len(n)})' for g, n in self.excluded_ops.items()) or 'none'}",
        ]
        if self.isa:
            lines.append(f"target       {self.target}; CPU integer path (MLAS U8S8): {self.isa['path']} ({self.isa['kernel']})")
        for graph, form in self.cpu_form.items():
            if isinstance(form, dict):
                ops = ", ".join(f"{n} {op}" for op, n in form["integer_ops"].items())
                lines.append(f"  {graph}: {self.cpu_form['scheme']}: {ops}; {form['float_compute']} float MatMul/Conv/Gemm, "
                             f"{form['standalone_qdq']} Q/DQ; activations {'/'.join(sorted(set(form['activation_types'])))}")  # fmt: skip
        if self.fp32:
            lines.append(f"held-out     {self.eval_scenes} scenes, K={self.eval_steps}")
            for name, metric in GATE_METRICS.items():
                if metric.key not in self.fp32 or metric.key not in self.int8:
                    continue  # an optional gate metric this evaluation did not report
                before, after = self.fp32[metric.key], self.int8[metric.key]
                lines.append(f"  {metric.key:<19} fp32 {before:8.4f}  int8 {after:8.4f}  change {after - before:+.4f}")
        if self.latent_error:
            last = self.latent_error[-1]
            lines.append(f"latent       final x: max |diff| {last['max_abs']:.4f}, mean {last['mean_abs']:.4f}, rel rms {last['rel_rms']:.4f}")
        if self.exclusion_ablation and self.target == "cpu":
            lines.append("float groups one denoiser step vs FP32; gain = step time saved by quantizing the group")
        for variant, row in self.exclusion_ablation.items():
            which = "one-step" if self.target == "cpu" else "final"
            gain = f", gain {row['gain']:+.1%}" if "gain" in row else ""
            lines.append(f"  {variant:<24} {row['quantized_nodes']:.0f} nodes quantized: {which} rel rms {row['rel_rms']:.4f}, "
                         f"max |diff| {row['max_abs']:.4f}{gain}")  # fmt: skip
        if self.speed:
            s = self.speed
            lines.append(f"speed (CPU)  one step at batch {s['rows']}: fp32 {s['fp32_ms']:.2f} ms, int8 {s['int8_ms']:.2f} ms (x{s['speedup']:.2f})")
        verdict = "passed" if self.passed else ("FAILED (written with --force)" if self.forced else "FAILED")
        lines.append(f"gate         {verdict}" + "".join(f"\n  {f['description']}" for f in self.failures))
        return lines
