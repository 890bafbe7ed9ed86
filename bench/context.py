"""The live state of one bench run (:class:`Context`: settings, artifacts, the open models, what the cases measured
for later ones) and the opening of what every case shares: the bundles through the SDK, and the PyTorch model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import FP32, Artifacts
from .outcomes import failure, skipped
from .settings import Settings


@dataclass
class Context:
    """The live state of one bench run: filled by the opening steps, read (and ``costs``, ``perceive_latency_ms``
    and ``errors`` added to) by the cases."""

    settings: Settings
    artifacts: Artifacts
    models: dict[str, Any] = field(default_factory=dict)  # label -> MMGenModel (open)
    manifests: dict[str, Any] = field(default_factory=dict)  # label -> Manifest
    torch_model: Any = None
    eval_json: list[Path] = field(default_factory=list)  # `mmgen-edge eval --json` reports to plot
    load_at_start: float | None = None  # 1-minute load average before the bench started
    errors: list[str] = field(default_factory=list)
    costs: dict[tuple[str, str, tuple[tuple[str, int], ...]], tuple[int, int]] = field(default_factory=dict)
    perceive_latency_ms: dict[tuple[str, int, int], float] = field(default_factory=dict)  # (label, batch, K)

    def attempt(self, where: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one case; a failure becomes ``{"error": ...}`` in the JSON and a line in ``errors``."""
        try:
            return fn()
        except Exception as exc:  # reported, not swallowed: the JSON carries the reason
            result = failure(exc)
            self.errors.append(f"{where}: {result['error']}")
            return result


def release(ctx: Context, label: str | None = None) -> None:
    """Close and drop one open bundle (``label``), or the PyTorch model (None), once no later case needs it: at
    the release size every copy is gigabytes, and the backends case opens three more."""
    import gc

    if label is None:
        ctx.torch_model = None
    elif label in ctx.models:
        ctx.models.pop(label).close()
    gc.collect()


def open_models(ctx: Context) -> dict[str, Any]:
    """Open every bundle with the SDK (``settings.runtime_threads``: N with ``--threads N``, as torch; None by
    default, each session's own choice); returns the per-bundle facts for the JSON."""
    import mmgen_edge
    from mmgen_edge.runtime.manifest import read_manifest

    facts: dict[str, Any] = {}
    for label, path in ctx.artifacts.bundles.items():

        def load(label: str = label, path: Path = path) -> dict[str, Any]:
            ctx.manifests[label] = read_manifest(path, verify="none")
            model = mmgen_edge.load(path, backend=ctx.settings.backend, threads=ctx.settings.runtime_threads,
                                  verify="size")  # fmt: skip
            ctx.models[label] = model
            m = model.manifest
            return {"path": path, "backend": model.backend, "precision": m.precision.value, "model": m.model.name,
                    "resolution": m.model.resolution, "max_batch": m.max_batch,
                    "model_weights_sha256": m.provenance.model_weights_sha256,
                    "threads": thread_facts(model)}  # fmt: skip

        facts[label] = ctx.attempt(f"open bundle {label}", load)
    return facts


def thread_facts(model: Any) -> dict[str, str]:
    """Each runner's thread count and why (ONNX Runtime CPU runners loaded without a thread count choose)."""
    facts = {}
    for name, runner in model.pipeline.runners.items():
        choice = getattr(runner, "thread_choice", None)
        facts[name] = choice.describe() if choice is not None else str(getattr(runner, "threads", None) or "default")
    return facts


def load_torch_model(ctx: Context) -> dict[str, Any]:
    """The PyTorch model (fp32, eval) and whether its weights are the fp32 bundle's."""
    import torch

    from mmgen_edge.export.model_dir import WEIGHTS_FILE, load_model
    from mmgen_edge.runtime.fileio import sha256_file

    model_dir = ctx.artifacts.model_dir
    if model_dir is None:
        return skipped(ctx.artifacts.missing.get("model_dir", "no model directory"))
    torch.set_num_threads(ctx.settings.threads)
    ctx.torch_model = load_model(model_dir, dtype=torch.float32)
    digest = sha256_file(model_dir / WEIGHTS_FILE)
    manifest = ctx.manifests.get(FP32)
    same = None if manifest is None else manifest.provenance.model_weights_sha256 == digest
    return {"path": model_dir, "weights_sha256": digest, "same_weights_as_fp32_bundle": same,
            "attention": "scaled_dot_product_attention (the fastest eager form; the ONNX graphs use explicit softmax)",
            "torch_threads": torch.get_num_threads()}  # fmt: skip

