"""The bench report: the ratios gathered from the cases, the goals judged on them, the facts of the machine (and a
warning when it was busy), the strict JSON written to ``OUT/bench.json`` and the summary printed after it."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgen_edge.runtime.fileio import write_text_atomic

from .artifacts import FP32
from .settings import Settings, default_threads

JSON_FILE = "bench.json"
#: 1-minute load average per CPU (before the bench starts) above which the JSON warns that the machine was busy:
#: 0.5 on 2 CPUs, 4 on 16 (the load average counts runnable processes, so an idle threshold grows with the cores).
BUSY_LOAD_PER_CPU = 0.25
#: Goal -> minimum value of the ratio (worst case over batches / step counts).
GOALS: dict[str, float] = {
    "ort_fp32_vs_torch_eager": 1.3,
    "ort_int8_vs_ort_fp32": 1.8,
    "conditioning_cache_speedup": 1.2,
    "stream_throughput_vs_inverse_latency": 0.9,
    "tiny_decoder_vs_full_decode": 2.0,  # issue 15: the distilled decoder's decode stage
    "tiny_decoder_vs_full_frame": 1.4,  # and the whole perceive frame
    "best_cpu_backend_vs_ort_fp32_frame": 1.5,  # issue 13: the demo frame on the fastest CPU backend (OpenVINO)
    "cpu_int8_vs_ort_fp32_b1": 1.5,  # issue 13: the CPU INT8 step at batch 1 (ORT's CPU form or Q/DQ on OpenVINO)
}
#: ``--size``: goals of the release size that replace or add to GOALS (issue 13's XL targets).
SIZE_GOALS: dict[str, dict[str, float]] = {
    "xl": {"best_cpu_backend_vs_ort_fp32_frame": 3.0, "cpu_int8_vs_ort_fp32_b1": 3.0},
}
#: Goals met by staying at or below the target: the fp32 bundle's runtime graphs on disk, in GiB (issue 13, XL).
#: GiB, as ``du -sh`` counts: the unit of the issue's "5.5 GB now" (the old XL layout is 5.43 GiB, 5.83e9 bytes).
#: In decimal GB the XL weights alone are 3.08 (770 M fp32 parameters), which no fp32 layout can go below.
MAX_GOALS: dict[str, dict[str, float]] = {"xl": {"fp32_bundle_graphs_gib": 3.0}}


def collect_ratios(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Every ratio of the report by name, keyed by where it was measured (b1, fp32/b4, K2, ...)."""
    ratios: dict[str, dict[str, float]] = {}

    def put(name: str, where: str, value: Any) -> None:
        if isinstance(value, (int, float)):
            ratios.setdefault(name, {})[where] = float(value)

    step = report.get("step", {})
    for where, batch in (step.items() if isinstance(step, dict) else []):
        found = batch.get("ratios") if isinstance(batch, dict) else None
        for name, value in (found.items() if isinstance(found, dict) else []):
            put(name, where, value)
            if name == "cpu_int8_vs_ort_fp32" and where == "b1" and not _backends_int8(report):
                put("cpu_int8_vs_ort_fp32_b1", "step/b1", value)  # the backends case's INT8 rows, where run, instead
    cache = report.get("conditioning_cache", {})
    for label, batches in (cache.items() if isinstance(cache, dict) else []):
        for where, case in (batches.items() if isinstance(batches, dict) else []):
            if isinstance(case, dict):
                put("conditioning_cache_speedup", f"{label}/{where}", case.get("conditioning_cache_speedup"))
    backends = report.get("backends", {})
    for where, case in (backends.items() if isinstance(backends, dict) else []):
        for name, found in (case.items() if isinstance(case, dict) and where.startswith("K") else []):
            if name.endswith("_vs_ort-cpu") and isinstance(found, dict):
                for stage, value in found.items():
                    put(f"{name}_{stage}", where, value)
        frames = [found.get("frame") for name, found in (case.items() if isinstance(case, dict) else [])
                  if name.endswith("_vs_ort-cpu") and "emulated" not in name and isinstance(found, dict)]  # fmt: skip
        frames = [f for f in frames if isinstance(f, (int, float))]
        if where.startswith("K") and frames:
            put("best_cpu_backend_vs_ort_fp32_frame", where, max(frames))
        best_int8 = case.get("best_int8_step") if isinstance(case, dict) and where.startswith("K") else None
        if isinstance(best_int8, dict):
            put("cpu_int8_vs_ort_fp32_b1", f"backends/{where}", best_int8.get("step_vs_ort_fp32"))
    decoders = report.get("decoders", {})
    for where, case in (decoders.items() if isinstance(decoders, dict) else []):
        found = case.get("tiny_vs_full") if isinstance(case, dict) and where.startswith("K") else None
        if isinstance(found, dict):
            put("tiny_decoder_vs_full_decode", where, found.get("decode"))
            put("tiny_decoder_vs_full_frame", where, found.get("frame"))
    stream = report.get("stream", {})
    for where, case in (stream.items() if isinstance(stream, dict) else []):
        if isinstance(case, dict):
            put("stream_throughput_vs_inverse_latency", where, case.get("stream_throughput_vs_inverse_latency"))
    sized = report.get("meta", {}).get("size", {})
    fp32_bytes = sized.get("bundle_bytes", {}).get(FP32) if isinstance(sized, dict) else None
    if isinstance(fp32_bytes, dict):
        put("fp32_bundle_graphs_gib", FP32, fp32_bytes.get("graphs", 0) / 2**30)
    return ratios


def _backends_int8(report: Mapping[str, Any]) -> bool:
    """Whether the backends case timed the INT8 bundle (its batch-1 rows then judge the CPU INT8 goal)."""
    backends = report.get("backends", {})
    return isinstance(backends, dict) and any(isinstance(c, dict) and "best_int8_step" in c for c in backends.values())


def evaluate_goals(ratios: Mapping[str, Mapping[str, float]], size: str | None = None) -> dict[str, Any]:
    """Each goal: its target, the worst measured value (over batches / K) and pass/fail (None: not measured).

    ``size`` (``--size``) takes that size's targets (SIZE_GOALS) and adds its at-most goals (MAX_GOALS), judged on
    the largest value.
    """
    goals: dict[str, Any] = {}
    for name, target in {**GOALS, **SIZE_GOALS.get(size or "", {})}.items():
        values = dict(ratios.get(name, {}))
        if name == "conditioning_cache_speedup":
            values = {k: v for k, v in values.items() if k.startswith(f"{FP32}/")} or values
        if not values:
            goals[name] = {"target": target, "pass": None, "reason": "not measured (see the case's skipped/error)"}
            continue
        worst = min(values.values())
        goals[name] = {"target": target, "worst": worst, "values": values, "pass": bool(worst >= target)}
    for name, limit in MAX_GOALS.get(size or "", {}).items():
        values = dict(ratios.get(name, {}))
        if not values:
            goals[name] = {"target": limit, "at_most": True, "pass": None, "reason": "not measured"}
            continue
        worst = max(values.values())
        goals[name] = {"target": limit, "at_most": True, "worst": worst, "values": values, "pass": bool(worst <= limit)}
    return goals


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def busy_warnings(load: float | None, cpus: int) -> list[str]:
    """Why the numbers of this run may not be trusted (empty on an idle machine).

    Args:
        load: the 1-minute load average before the bench started (None: unknown, no warning).
        cpus: the CPUs of this run; the machine is busy above ``BUSY_LOAD_PER_CPU * cpus``.

    Returns:
        One warning when the load was above the threshold, else none.
    """
    threshold = BUSY_LOAD_PER_CPU * cpus
    if load is None or load <= threshold:
        return []
    return [
        f"the machine was busy before the bench started (1-minute load {load:.2f} on {cpus} CPUs, above "
        f"{threshold:.2f} = {BUSY_LOAD_PER_CPU} per CPU): timings are noisy, "
        "and PyTorch's OpenMP threads slow down by orders of magnitude when other processes hold the cores, so the "
        "torch-vs-ORT ratios are not meaningful; rerun on an idle machine (or with --threads 1)"
    ]


def environment_facts(settings: Settings) -> dict[str, Any]:
    """Versions, the CPU and the threads of this run (``meta`` of the JSON)."""
    import onnxruntime
    import torch

    names = [line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "cpu": cpu,
        "cpus_available": default_threads(),
        "threads": settings.threads,
        "runtime_threads": settings.runtime_threads or "auto",
    }


def _cpuinfo_lines() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


def print_summary(report: Mapping[str, Any], json_path: Path) -> None:
    """Where the JSON went, the warnings, each goal (PASS / FAIL / n/a) and the first line of each error."""
    print(f"bench: {json_path}")
    for line in report["meta"]["warnings"]:
        print(f"  warning: {line}")
    for name, goal in report["goals"].items():
        state = {True: "PASS", False: "FAIL", None: "n/a"}[goal["pass"]]
        value = f"{goal['worst']:.2f}" if "worst" in goal else goal.get("reason", "")
        bound = "at most " if goal.get("at_most") else ""
        print(f"  {name:<40} {state:<5} {value} (target {bound}{goal['target']})")
    for line in report["errors"]:
        print(f"  error: {line.splitlines()[0]}")


def clean_json(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, Paths -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return clean_json(value.item())
    if isinstance(value, Path):
        return str(value)
    return value



def write_report(report: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``report`` as strict JSON to ``out_dir/bench.json``; returns the path."""
    path = out_dir / JSON_FILE
    return write_text_atomic(path, json.dumps(clean_json(report), indent=2, allow_nan=False) + "\n")
