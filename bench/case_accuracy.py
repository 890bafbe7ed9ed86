"""The accuracy-vs-latency case: accuracy of ``mmgen-edge eval --json`` reports (``--eval-json``) or, without one,
of a small SDK evaluation on held-out scenes, against the perceive latency measured by the perceive case; plotted
into ``accuracy_latency.png``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .context import Context
from .inputs import SEED
from .outcomes import skipped

PLOT_FILE = "accuracy_latency.png"
#: Accuracy metrics of the plot: (key in the eval report, axis label).
ACCURACY_METRICS = (("depth_delta1", "depth δ1 (higher is better)"),
                    ("normal_mean", "normal error, degrees (lower is better)"),
                    ("seg_miou", "segmentation mIoU (higher is better)"))  # fmt: skip


def accuracy_point(
    ctx: Context, series: str, label: str | None, k: int, metrics: Mapping[str, Any], bench_latency: bool
) -> dict[str, Any]:
    """One point of the plot: accuracy at K; latency = this bench's batch-1 perceive median (``bench_latency``)
    or the evaluation's own seconds per frame (measured batched, so lower). One source per series, never mixed."""
    measured = ctx.perceive_latency_ms.get((label, 1, k)) if bench_latency and label else None
    if bench_latency and measured is None:
        raise ValueError(f"no bench latency for {label} at K={k}")
    return {
        "series": series,
        "K": k,
        "latency_ms": measured if measured is not None else metrics["seconds_per_frame"] * 1e3,
        "latency_source": "bench perceive, batch 1" if measured is not None else "eval seconds_per_frame (batched)",
        **{key: metrics.get(key) for key, _ in ACCURACY_METRICS},
    }


def measured_every_k(ctx: Context, label: str | None, ks: Sequence[int]) -> bool:
    """Whether the perceive case measured bundle ``label`` at batch 1 for every K of ``ks``."""
    return label is not None and all((label, 1, k) in ctx.perceive_latency_ms for k in ks)


def points_from_eval_json(ctx: Context, path: Path) -> list[dict[str, Any]]:
    """Accuracy per K of an eval report; latency: measured here (batch 1) for the same bundle, else the report's."""
    report = json.loads(path.read_text())
    if "perception" not in report:
        raise ValueError(f"{path} is not an `mmgen-edge eval --json` report (no 'perception' key)")
    bundle = Path(report.get("bundle", ""))
    label = next((lb for lb, p in ctx.artifacts.bundles.items() if p.resolve() == bundle.resolve()), None)
    series = f"{label or bundle.name} ({path.name})"
    ks = [int(k) for k in report["perception"]]
    use_bench = measured_every_k(ctx, label, ks)
    return [accuracy_point(ctx, series, label, int(k), m, use_bench) for k, m in report["perception"].items()]


def points_from_sdk_eval(ctx: Context) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """A small SDK evaluation of every open bundle at every K (held-out scenes), and the trivial baseline."""
    from mmgen_edge.samples.shapes.evaluate import baselines, evaluate_perception, held_out_scenes

    points = []
    baseline: dict[str, float] = {}
    for label, model in ctx.models.items():
        scenes = held_out_scenes(ctx.settings.eval_scenes, model.resolution)
        baseline = baselines(scenes)["trivial"]
        use_bench = measured_every_k(ctx, label, ctx.settings.steps)
        for k in ctx.settings.steps:
            points.append(accuracy_point(ctx, label, label, k, evaluate_perception(model, scenes, k, seed=SEED), use_bench))
    return points, baseline


def plot_accuracy_latency(points: Sequence[dict[str, Any]], baseline: Mapping[str, float], path: Path, title: str) -> None:
    """One panel per ACCURACY_METRICS entry: accuracy vs latency per series, K annotated, the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ACCURACY_METRICS), figsize=(5 * len(ACCURACY_METRICS), 4), squeeze=False)
    series = sorted({p["series"] for p in points})
    for ax, (key, label) in zip(axes[0], ACCURACY_METRICS):
        for name in series:
            pts = [p for p in points if p["series"] == name and p.get(key) is not None]
            pts.sort(key=lambda p: p["latency_ms"])
            ax.plot([p["latency_ms"] for p in pts], [p[key] for p in pts], marker="o", label=name)
            for p in pts:
                ax.annotate(f"K={p['K']}", (p["latency_ms"], p[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if baseline.get(key) is not None:
            ax.axhline(baseline[key], color="grey", linestyle="--", linewidth=1, label="trivial baseline")
        ax.set_xlabel("perceive latency per frame (ms)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_accuracy(ctx: Context, out_dir: Path) -> dict[str, Any]:
    """The accuracy-vs-latency case: the points, and the plot written into ``out_dir``."""
    s = ctx.settings
    baseline: dict[str, float] = {}
    if ctx.eval_json:
        points = [p for path in ctx.eval_json for p in points_from_eval_json(ctx, path)]
        reports = [json.loads(path.read_text()) for path in ctx.eval_json]
        baseline = reports[0].get("baselines", {}).get("trivial", {})
        source = f"--eval-json {', '.join(map(str, ctx.eval_json))}"
    elif not ctx.models:
        return skipped("no --eval-json and no bundle open to evaluate")
    elif s.eval_scenes == 0:
        return skipped("no --eval-json and --eval-scenes 0")
    else:
        points, baseline = points_from_sdk_eval(ctx)
        source = f"SDK evaluation on {s.eval_scenes} held-out scenes (evaluate_perception), no --eval-json given"
    if not points:
        return skipped(f"{source}: no points")
    png = out_dir / PLOT_FILE
    title = "accuracy vs latency" + (" (smoke: tiny random model, accuracy meaningless)" if s.smoke else "")
    plot_accuracy_latency(points, baseline, png, title)
    return {"source": source, "points": points, "trivial_baseline": baseline, "png": png}
