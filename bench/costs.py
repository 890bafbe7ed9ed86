"""FLOPs and bytes of a case, counted on its bundle's ONNX graphs (``harness.graph_cost``): the ``cost`` entry next
to a case's timing, from which ``roofline`` draws its lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import harness
from .context import Context
from .outcomes import skipped

#: A case's graphs: (graph name, its dynamic sizes, calls per case).
CostParts = Sequence[tuple[str, Mapping[str, int], int]]


def graph_input_shapes(manifest: Any, graph: str, sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Concrete input shapes of a bundle graph: symbolic dims (N, B, V) from ``sizes``."""
    entry = manifest.graphs[graph]
    return {spec.name: [int(sizes[d]) if isinstance(d, str) else int(d) for d in spec.shape] for spec in entry.inputs}


def bundle_graph_cost(ctx: Context, label: str, graph: str, sizes: Mapping[str, int]) -> tuple[int, int]:
    """(FLOPs, bytes) of one call of ``graph`` of bundle ``label`` (cached in ``ctx.costs``)."""
    key = (label, graph, tuple(sorted(sizes.items())))
    if key not in ctx.costs:
        manifest = ctx.manifests[label]
        path = ctx.artifacts.bundles[label] / manifest.graphs[graph].file
        ctx.costs[key] = harness.graph_cost(path, graph_input_shapes(manifest, graph, sizes))
    return ctx.costs[key]


def case_cost(ctx: Context, label: str, parts: CostParts, per_frame: int | None = None) -> dict[str, Any]:
    """FLOPs and bytes of a case made of (graph, sizes, calls) parts of one bundle.

    Args:
        ctx: the run (its manifests; the cost of each graph is cached there).
        label: the bundle (fp32 / int8).
        parts: the graphs one timed call of the case runs.
        per_frame: frames per timed call, for the roofline's "fraction needed for 30 fps" (None: not a frame case).

    Returns:
        ``{"flops", "bytes", "precision", "graphs"[, "frames_per_call"]}``; skipped without the bundle, and an error
        entry (also listed in ``ctx.errors``) when a graph cannot be counted.
    """
    if label not in ctx.manifests:
        return skipped(f"no {label} bundle to read the graphs from")

    def count() -> dict[str, Any]:
        flops = nbytes = 0
        for graph, sizes, calls in parts:
            f, b = bundle_graph_cost(ctx, label, graph, sizes)
            flops, nbytes = flops + calls * f, nbytes + calls * b
        out: dict[str, Any] = {"flops": flops, "bytes": nbytes, "precision": ctx.manifests[label].precision.value,
                               "graphs": [f"{calls} x {graph} {dict(sizes)}" for graph, sizes, calls in parts]}  # fmt: skip
        if per_frame:
            out["frames_per_call"] = per_frame
        return out

    return ctx.attempt(f"graph cost {label} {[p[0] for p in parts]}", count)
