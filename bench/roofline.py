"""The roofline of each measured case: where its achieved FLOP/s sits under this CPU's measured peaks, and the
bound on the target devices of ``harness.DEVICE_PEAKS`` (with the fraction of it needed to match this CPU)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import harness
from .artifacts import FP32, INT8

#: Frame rate for the "fraction of a device's roofline needed" of whole-frame cases.
TARGET_FPS = 30.0


def this_cpu_peaks() -> dict[str, Any]:
    """Measured fp32 GEMM peak and copy bandwidth (run at the end: their buffers would inflate the peak RSS)."""
    return {
        "gemm_peak_gflops": harness.cpu_gemm_peak_gflops(),
        "memory_bandwidth_gbps": harness.cpu_memory_bandwidth_gbps(),
        "gemm": f"numpy float32 {harness.GEMM_SIZE}^3 matmul, best of {harness.GEMM_REPEATS}, numpy's BLAS threads",
        "bandwidth": f"numpy copy of {harness.BANDWIDTH_BYTES >> 20} MiB (read + write), one thread: a lower bound",
    }


def roofline_line(cost: Mapping[str, Any], median_ms: float, cpu: Mapping[str, Any]) -> dict[str, Any]:
    """The roofline of one case on this CPU and the table's devices."""
    flops, nbytes, precision = cost["flops"], cost["bytes"], cost["precision"]
    seconds = median_ms / 1e3
    line: dict[str, Any] = {
        "this_cpu": harness.roofline(flops, nbytes, seconds, cpu["gemm_peak_gflops"] * harness.GIGA,
                                     cpu["memory_bandwidth_gbps"] * harness.GIGA),  # fmt: skip
        "this_cpu_peak_note": "fp32 GEMM peak" + (" (INT8 kernels may exceed it)" if precision == INT8 else ""),
    }
    achieved_gflops = flops / seconds / harness.GIGA
    devices = {}
    for device in harness.DEVICE_PEAKS:
        bound = harness.device_bound(flops, nbytes, device, precision if precision in harness.PRECISION_PEAK_KEY else FP32)
        entry = {**bound, "fraction_needed_to_match_this_cpu": achieved_gflops / bound["attainable_gflops"]}
        frames = cost.get("frames_per_call")
        if frames:
            needed = flops / frames * TARGET_FPS / harness.GIGA
            entry[f"fraction_needed_for_{TARGET_FPS:g}_fps"] = needed / bound["attainable_gflops"]
        devices[device] = entry
    line["devices"] = devices
    return line


def add_rooflines(node: Any, cpu: Mapping[str, Any]) -> None:
    """Add ``roofline`` next to every measured case that has a ``timing`` and a usable ``cost``."""
    if isinstance(node, dict):
        cost, timing = node.get("cost"), node.get("timing")
        if isinstance(cost, dict) and "flops" in cost and isinstance(timing, dict) and cost["bytes"] > 0:
            node["roofline"] = roofline_line(cost, timing["median_ms"], cpu)
        for value in list(node.values()):
            add_rooflines(value, cpu)
    elif isinstance(node, list):
        for value in node:
            add_rooflines(value, cpu)
