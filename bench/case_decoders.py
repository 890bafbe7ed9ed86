"""The decoders case: the fp32 bundle next to the same bundle with a distilled decoder (``mmgen-edge export
--decoder``), per K: the median of each stage and of the whole frame, one frame at a time, interleaved in one process
(``samples.shapes.evaluate.compare_stage_times``), the speedups, and the FLOPs of each decoder (three maps) and of
each frame, with the decoder's share of the frame."""

from __future__ import annotations

from typing import Any

from mmgen_edge.runtime.modalities import PERCEPTION_TASKS

from .artifacts import FP32, TINY
from .context import Context
from .costs import case_cost
from .inputs import scene_images
from .outcomes import skipped


def frame_parts(k: int) -> list[tuple[str, dict[str, int], int]]:
    """The graphs of one batch-1 perceive frame at K steps (three maps decoded in one call)."""
    return [("vae_encoder", {"N": 1}, 1), ("denoiser_cached", {"N": 1, "B": 1}, k),
            ("vae_decoder", {"V": len(PERCEPTION_TASKS)}, 1)]  # fmt: skip


def decoder_costs(ctx: Context, label: str, k: int) -> dict[str, Any]:
    """FLOPs of the decoder (three maps) and of a K-step frame of one bundle, and the decoder's share."""
    decoder = case_cost(ctx, label, [("vae_decoder", {"V": len(PERCEPTION_TASKS)}, 1)])
    frame = case_cost(ctx, label, frame_parts(k), per_frame=1)
    out = {"decoder": decoder, "frame": frame}
    if "flops" in decoder and "flops" in frame and frame["flops"]:
        out["decoder_share_of_frame_flops"] = decoder["flops"] / frame["flops"]
    return out


def bench_decoders(ctx: Context) -> dict[str, Any]:
    """Every K: full vs distilled decoder, per stage and whole frame, with the FLOPs of both."""
    from mmgen_edge.samples.shapes.evaluate import compare_stage_times

    if FP32 not in ctx.models or TINY not in ctx.models:
        return skipped(ctx.artifacts.missing.get("bundle_tiny", "needs the fp32 and the distilled-decoder bundles"))
    full, tiny = ctx.models[FP32], ctx.models[TINY]
    decoder = tiny.manifest.vae.decoder
    out: dict[str, Any] = {"decoder": decoder.model_dump() if decoder else None,
                           "gate_passed": (tiny.manifest.vae.gate or {}).get("passed")}  # fmt: skip
    image = scene_images(1, full.resolution)[0]
    for k in ctx.settings.steps:

        def case(k: int = k) -> dict[str, Any]:
            times = compare_stage_times({FP32: full, TINY: tiny}, image, k, frames=ctx.settings.runs,
                                        warmup=ctx.settings.warmup)  # fmt: skip
            return {"ms": {FP32: times[FP32], TINY: times[TINY]},
                    "tiny_vs_full": times["speedup"][TINY],
                    "cost": {FP32: decoder_costs(ctx, FP32, k), TINY: decoder_costs(ctx, TINY, k)}}  # fmt: skip

        out[f"K{k}"] = ctx.attempt(f"decoders K{k}", case)
    return out
