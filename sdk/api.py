"""The SDK: ``mmgen_edge.load()`` and the model it returns (``perceive``, ``generate``, ``stream``). No torch.

    import mmgen_edge
    model = mmgen_edge.load()                      # the bundled demo model, best backend available
    result = model.perceive("photo.jpg")           # depth, normals, segmentation at the photo's resolution
    sample = model.generate(class_label=3, seed=0) # rgb + depth + normals + segmentation
    sample = model.generate(condition={"depth": disparity}, seed=0)
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from mmgen_edge.runtime.backend import CPU_KINDS, MAX_THREADS, OPENVINO_ANY
from mmgen_edge.runtime.modalities import (
    CONDITION_TASKS,
    DEPTH,
    IMAGE_MODALITY,
    MASK,
    NORMAL,
    PERCEPTION_TASKS,
    modality_task,
    task_modality,
)
from mmgen_edge.runtime.pipeline import Pipeline, Timings
from mmgen_edge.runtime.sampler import SamplerConfig, check_cfg_scale, check_integer, check_steps

from . import processors
from .images import load_image, to_input_size, to_model_size
from .model_base import Model
from .protocol import MAX_SEED  # the server's bounds: a local call and a served one agree
from .results import GenerationResult, PerceptionResult, SegmentationMap

#: User noise: a standard normal draw; a value beyond this is not noise (and overflows the sampler in float32).
MAX_NOISE = 1e3


def check_seed(seed: object) -> int | None:
    """``seed`` as an int in 0..MAX_SEED (Python or numpy integer, not a bool), or None for a random draw."""
    return None if seed is None else check_integer(seed, "seed", 0, MAX_SEED)


DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "samples" / "shapes" / "bundle"
BUNDLE_HINT = (
    "name a bundle (load(bundle=DIR), the CLI's --bundle DIR, or MMGEN_EDGE_BUNDLE=DIR), or create the demo bundle "
    "with `mmgen-edge demo` (needs the export extra: pip install 'mmgen-edge[export]')"
)


def default_bundle() -> Path:
    """The demo model's bundle (``MMGEN_EDGE_BUNDLE`` overrides)."""
    return Path(os.environ.get("MMGEN_EDGE_BUNDLE", "").strip() or DEFAULT_BUNDLE)  # empty: unset, not "."


def load(
    bundle: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    device: str = "auto",
    steps: int | None = None,
    threads: int | None = None,
    verify: str = "full",
    cuda_graph: bool = False,
) -> "MMGenModel":
    """Open a bundle (default: the demo model) on a backend.

    Args:
        backend: "auto" (TensorRT engines -> ORT TensorRT -> ORT CUDA -> OpenVINO -> ORT CPU), "openvino"
            (bf16 where the CPU runs it natively, else fp32), or one of "tensorrt", "ort-tensorrt", "ort-cuda",
            "ort-cpu", "openvino-fp32", "openvino-bf16".
        device: "auto", "cpu" (backend="ort-cpu" unless a CPU backend is named) or "cuda" (a GPU backend is
            required).
        steps: default sampler steps (default: the manifest's).
        threads: intra-op threads of every session; None: the backend's default, except that an ONNX Runtime CPU
            session whose call is short is timed on one thread too and keeps it when that is faster
            (``runtime.thread_choice``; ``model.pipeline.runners[name].thread_choice`` says which and why).
        verify: "full" (SHA-256 of every file), "size" or "none".
        cuda_graph: native TensorRT only: capture and replay CUDA graphs while input shapes repeat (streams).
    """
    path = Path(bundle) if bundle is not None else default_bundle()
    if not (path / "manifest.json").is_file():
        hint = f"; {BUNDLE_HINT}" if bundle is None else ""
        raise FileNotFoundError(f"no bundle at {path} (manifest.json missing){hint}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        cpu_backends = ("ort-cpu", OPENVINO_ANY, *(k.value for k in CPU_KINDS))
        if backend not in ("auto", *cpu_backends):
            raise ValueError(f"device='cpu' conflicts with backend={backend!r}")
        backend = "ort-cpu" if backend == "auto" else backend
    if threads is not None:
        threads = check_integer(threads, "threads", 1, MAX_THREADS)
    pipeline = Pipeline(path, backend=backend, verify=verify, threads=threads, cuda_graph=cuda_graph)
    if device == "cuda" and pipeline.choice.kind in CPU_KINDS:
        pipeline.close()
        raise RuntimeError(f"device='cuda' but no GPU backend is available:\n{pipeline.choice.describe()}")
    return MMGenModel(pipeline, steps)


class MMGenModel(Model):
    """A loaded bundle (the :class:`~mmgen_edge.sdk.model_base.Model` surface, run here).

    Thread-compatible, not thread-safe: use one per thread (or the stream API).
    """

    def __init__(self, pipeline: Pipeline, steps: int | None = None):
        self.pipeline = pipeline
        self.manifest = pipeline.manifest
        self.steps = self.manifest.sampler.num_steps if steps is None else check_steps(steps)

    def close(self) -> None:
        self.pipeline.close()

    @property
    def backend(self) -> str:
        return self.pipeline.choice.kind.value

    # ----------------------------------------------------------------- helpers
    def _sampler(self, steps: int | None) -> SamplerConfig:
        k = self.steps if steps is None else check_steps(steps)
        return self.manifest.sampler.model_copy(update={"num_steps": k})

    def _noise(self, n: int, seed: int | None, noise: np.ndarray | None, rng: np.random.Generator | None = None) -> np.ndarray:
        shape = self.latent_shape(n)
        if noise is None:
            return (rng or np.random.default_rng(check_seed(seed))).standard_normal(shape, dtype=np.float32)
        return noise_array(noise, shape)

    def _check_batch(self, n: int) -> None:
        if n == 0:
            raise ValueError("no images given")
        if n > self.manifest.max_batch:
            raise ValueError(f"batch of {n} is larger than the bundle's maximum {self.manifest.max_batch}; split it")

    # -------------------------------------------------------------- perceive
    def perceive(
        self,
        image: object,
        tasks: Sequence[str] = PERCEPTION_TASKS,
        steps: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        return_latents: bool = False,
    ) -> PerceptionResult | list[PerceptionResult]:
        """As :meth:`Model.perceive <mmgen_edge.sdk.model_base.Model.perceive>`; a list runs as one batch."""
        tasks = check_tasks(tasks)
        inputs, batched = load_images(image)
        self._check_batch(len(inputs))
        start = time.perf_counter()
        model_images = np.stack([to_model_size(im, self.resolution) for im in inputs])
        preprocess = time.perf_counter() - start
        raw = self.perceive_model_images(model_images, tasks, steps, self._noise(len(inputs), seed, noise))
        raw.timings["preprocess"] = preprocess
        results = [
            perception_result(raw, i, inputs[i].shape[:2], self.backend, return_latents) for i in range(len(inputs))
        ]
        return results if batched else results[0]

    def perceive_model_images(
        self, images: np.ndarray, tasks: Sequence[str], steps: int | None, noise: np.ndarray
    ) -> "ModelOutput":
        """The model part of ``perceive``: (N, R, R, 3) uint8 images at the model resolution and (N, 16, h, w)
        noise -> the decoded modality images per input (no post-processing). Used by servers."""
        tasks = check_tasks(tasks)
        self._check_batch(len(images))
        sampler = self._sampler(steps)
        timings = Timings()
        with timings.stage("encode"):
            rgb_latent = self.pipeline.encode(images)
        rgb = self.manifest.model.modality_index(IMAGE_MODALITY)
        with timings.stage("steps"):
            latents = self.pipeline.sample(noise, condition=rgb_latent, condition_index=rgb, sampler=sampler)
        modalities = [task_modality(t) for t in tasks]
        with timings.stage("decode"):
            parts = self.pipeline.split_modalities(latents)
            decoded = self.pipeline.decode(np.concatenate([parts[m] for m in modalities]))  # (T*N, H, W, 3)
        n = len(images)
        per_image = [{m: decoded[j * n + i] for j, m in enumerate(modalities)} for i in range(n)]
        return ModelOutput(per_image, latents, timings.stages, sampler.num_steps)

    # -------------------------------------------------------------- generate
    def generate(
        self,
        class_label: int | None = None,
        condition: Mapping[str, object] | None = None,
        cfg_scale: float | None = None,
        steps: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        return_latents: bool = False,
    ) -> GenerationResult:
        """As :meth:`Model.generate <mmgen_edge.sdk.model_base.Model.generate>`."""
        start = time.perf_counter()
        request = generation_request(
            self.resolution, self.num_classes, class_label, condition, self.guidance(cfg_scale), steps, seed, noise,
            self.manifest.model.mask_palette,
        )
        preprocess = time.perf_counter() - start
        raw = self.generate_model_images([request])
        raw.timings["preprocess"] = preprocess
        return generation_result(raw, 0, request, self.backend, return_latents)

    def generate_model_images(self, requests: Sequence["GenerationRequest"]) -> "ModelOutput":
        """The model part of ``generate`` for one batch of requests that share steps, guidance and condition kind
        (each keeps its own label, seed, noise and condition map). Used by ``generate`` (one request) and servers."""
        if not requests:
            raise ValueError("no generation requests given")
        first = requests[0]
        key = (first.steps, first.cfg_scale, first.condition)
        if any((r.steps, r.cfg_scale, r.condition) != key for r in requests):
            raise ValueError("requests in one batch must share steps, cfg_scale and the condition kind")
        self._check_batch(len(requests))
        sampler = self._sampler(first.steps)
        timings = Timings()
        cond_latent = cond_index = None
        if first.condition is not None:
            with timings.stage("encode"):
                cond_latent = self.pipeline.encode(np.stack([r.condition_image for r in requests]))  # type: ignore[misc]
            cond_index = self.manifest.model.modality_index(task_modality(first.condition))
        null = self.manifest.model.null_label
        labels = np.array([null if r.class_label is None else r.class_label for r in requests], np.int64)
        # One generator per request: its start noise, then its SDE step noise (so a request's sample does not
        # depend on what it was batched with).
        rngs = [np.random.default_rng(r.seed) for r in requests]
        noise = np.concatenate([self._noise(1, None, r.noise, rng) for r, rng in zip(requests, rngs)])
        step_noise = self.pipeline.step_noise(sampler, rngs)
        with timings.stage("steps"):
            latents = self.pipeline.sample(
                noise, labels=labels, condition=cond_latent, condition_index=cond_index, sampler=sampler,
                cfg_scale=float(first.cfg_scale), step_noise=step_noise,
            )  # fmt: skip
        condition = None if first.condition is None else task_modality(first.condition)
        outputs = [m for m in self.manifest.modalities if m != condition]  # every other modality, manifest order
        n = len(requests)
        with timings.stage("decode"):
            parts = self.pipeline.split_modalities(latents)
            decoded = self.pipeline.decode(np.concatenate([parts[m] for m in outputs]))
        per_sample = [{m: decoded[j * n + i] for j, m in enumerate(outputs)} for i in range(n)]
        return ModelOutput(per_sample, latents, timings.stages, sampler.num_steps)


# ------------------------------------------------------------------------------------------------ shared parts
# The pieces below are shared by the local model and the served one (``mmgen_edge.serve``): the server runs the
# model part, the remote client the pre- and post-processing, so both return the same results.


@dataclass
class ModelOutput:
    """What the model part of perceive/generate returns: decoded modality images (R, R, 3) uint8 per sample."""

    images: list[dict[str, np.ndarray]]
    latents: np.ndarray | None
    timings: dict[str, float]
    steps: int


@dataclass(frozen=True)
class GenerationRequest:
    """One ``generate`` call, checked, with its condition map encoded at the model resolution."""

    class_label: int | None = None
    condition: str | None = None  # a task name of CONDITION_TASKS ("depth", "normals" or "segmentation")
    condition_image: np.ndarray | None = None  # (R, R, 3) uint8
    cfg_scale: float = 1.0
    steps: int | None = None
    seed: int | None = None
    noise: np.ndarray | None = None


def load_images(image: object) -> tuple[list[np.ndarray], bool]:
    """One image or a list of them -> (validated RGB uint8 images, whether a list was given)."""
    batched = isinstance(image, (list, tuple))
    items = image if batched else [image]
    return [load_image(im, f"image[{i}]" if batched else "image") for i, im in enumerate(items)], batched  # type: ignore[arg-type, union-attr]


def noise_array(noise: object, shape: tuple[int, int, int, int]) -> np.ndarray:
    """User noise checked against ``shape`` (N, C, h, w); one sample's (C, h, w) is used for every sample."""
    raw = np.asarray(noise)
    if raw.dtype.kind not in "fiu":  # complex (its imaginary part would be dropped), bool, object, strings
        raise ValueError(f"noise must be a real float array, got dtype {raw.dtype}")
    noise = raw.astype(np.float32, copy=False)
    if noise.shape == shape[1:]:
        noise = np.broadcast_to(noise, shape)
    if noise.shape != shape:
        raise ValueError(f"noise must have shape {shape[1:]} or {shape}, got {noise.shape}")
    if not np.isfinite(noise).all():
        raise ValueError("noise contains NaN or infinite values")
    if noise.size and float(np.abs(noise).max()) > MAX_NOISE:
        raise ValueError(f"noise must be a standard normal draw: |values| at most {MAX_NOISE:g}, got {float(np.abs(noise).max()):g}")
    return np.ascontiguousarray(noise)


def check_tasks(tasks: Sequence[str], known: Sequence[str] = PERCEPTION_TASKS) -> tuple[str, ...]:
    """Perception task names: each known, each at most once, at least one. The one policy of the local model, the
    remote client and the server. A string is one task name or a comma-separated list (``"depth,normals"``)."""
    if isinstance(tasks, str):
        tasks = tuple(t.strip() for t in tasks.split(","))
    elif tasks is None or not isinstance(tasks, Iterable):
        raise ValueError(f"tasks must be task names (a list, or a comma-separated string), got {tasks!r}")
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown or list(tasks)}; choose from {list(known)}")
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise ValueError(f"tasks must name each task at most once; repeated: {repeated}")
    return tasks


def generation_request(
    resolution: int,
    num_classes: int,
    class_label: int | None = None,
    condition: Mapping[str, object] | None = None,
    cfg_scale: float = 1.0,
    steps: int | None = None,
    seed: int | None = None,
    noise: np.ndarray | None = None,
    mask_palette: Sequence[Sequence[int]] | None = None,
) -> GenerationRequest:
    """A checked generation request; a segmentation condition given as labels is painted with ``mask_palette`` (the
    model's ``ModelConfig.mask_palette``; None: random colours, as the release paints)."""
    from .conditions import condition_image

    if class_label is not None:
        check_integer(class_label, "class_label", 0, num_classes - 1)
    cfg_scale = check_cfg_scale(cfg_scale)
    seed = check_seed(seed)
    name = image = None
    if condition is not None and not isinstance(condition, Mapping):
        raise ValueError(f"condition must be a mapping like {{'depth': array}}, got {type(condition).__name__}")
    if condition:
        if len(condition) != 1:
            raise ValueError(f"give exactly one condition map, got {sorted(condition)}")
        ((name, value),) = condition.items()
        if name not in CONDITION_TASKS:
            raise ValueError(f"unknown condition {name!r}; choose {', '.join(CONDITION_TASKS)}")
        image = to_model_size(condition_image(name, value, seed or 0, mask_palette), resolution)
    label = None if class_label is None else int(class_label)
    return GenerationRequest(label, name, image, float(cfg_scale), steps, seed, noise)


def maps_from_images(images: Mapping[str, np.ndarray], size: tuple[int, int]) -> dict[str, object]:
    """Decoded modality images (model resolution) -> typed maps (depth, normals, segmentation) at ``size``."""
    out: dict[str, object] = {}
    if DEPTH in images:
        out[modality_task(DEPTH)] = to_input_size(processors.depth_from_image(images[DEPTH]), size)
    if NORMAL in images:
        normals = to_input_size(processors.normals_from_image(images[NORMAL]), size)
        out[modality_task(NORMAL)] = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)
    if MASK in images:
        seg = processors.segment_from_image(images[MASK])
        out[modality_task(MASK)] = SegmentationMap(
            labels=to_input_size(seg.labels, size, nearest=True).astype(np.int32), colours=seg.colours
        )
    return out


def _postprocess(raw: ModelOutput, images: Mapping[str, np.ndarray], size: tuple[int, int]) -> tuple[dict[str, object], dict[str, float]]:
    """Typed maps of one sample, and the batch's timings with this post-processing added."""
    start = time.perf_counter()
    maps = maps_from_images(images, size)
    timings = dict(raw.timings)
    timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - start
    return maps, timings


def perception_result(raw: ModelOutput, i: int, size: tuple[int, int], backend: str, return_latents: bool) -> PerceptionResult:
    """Sample ``i`` of a perceive batch, post-processed at the input's ``size`` (H, W)."""
    maps, timings = _postprocess(raw, raw.images[i], size)
    return PerceptionResult(
        **maps,  # type: ignore[arg-type]
        images=raw.images[i],
        timings=timings,
        steps=raw.steps,
        backend=backend,
        latents=raw.latents[i] if return_latents and raw.latents is not None else None,
    )


def generation_result(raw: ModelOutput, i: int, request: GenerationRequest, backend: str, return_latents: bool) -> GenerationResult:
    """Sample ``i`` of a generate batch as the typed result (maps at the model resolution)."""
    images = raw.images[i]
    resolution = images[IMAGE_MODALITY].shape[0]
    maps, timings = _postprocess(raw, {k: v for k, v in images.items() if k != IMAGE_MODALITY}, (resolution, resolution))
    return GenerationResult(
        rgb=images[IMAGE_MODALITY],
        **maps,  # type: ignore[arg-type]
        images=images,
        condition=request.condition,
        class_label=request.class_label,
        timings=timings,
        steps=raw.steps,
        backend=backend,
        latents=raw.latents[i] if return_latents and raw.latents is not None else None,
    )
