"""A bundle opened on a backend: VAE encode/decode and the denoising loop, numpy in and out (no torch).

:class:`Pipeline` is the façade the SDK, the servers and calibration call (``encode``, ``sample``, ``decode``);
the denoising loop behind it is an implementation detail. Images here are already at the model's resolution;
resizing, validation and post-processing live in ``sdk``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backend import (
    OPENVINO_PRECISIONS, RUNTIME_GRAPHS, BackendChoice, BackendKind, Environment, choose_backend, detect_environment,
    open_runners,
)  # fmt: skip
from .cpu_backend_choice import measured_cpu_choice, remembered_choice
from .loop import DenoisingLoop
from .manifest import BATCH_DIM, DECODE_DIM, Manifest, read_manifest
from .onnxruntime_runner import CPU
from .runner import Runner, deactivate_runners
from .sampler import SamplerConfig


class NonFiniteOutputError(RuntimeError):
    """A graph produced NaN or Inf (non-finite weights in the bundle, or non-finite inputs)."""


@dataclass
class Timings:
    """Seconds per stage of the last call (encode, steps, decode, postprocess...)."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start


class Pipeline:
    """Everything the SDK needs from a bundle. Close it (or use ``with``) to release the sessions/engines."""

    def __init__(
        self,
        bundle: str | Path,
        backend: str = "auto",
        verify: str = "full",
        threads: int | None = None,
        environment: Environment | None = None,
        cuda_graph: bool = False,
    ):
        self.bundle = Path(bundle)
        self.manifest: Manifest = read_manifest(self.bundle, verify=verify)  # type: ignore[arg-type]
        env = environment or detect_environment()
        self.choice: BackendChoice = choose_backend(self.manifest, env, backend, self.bundle)
        measure = False
        if backend == "auto" and self.choice.kind in OPENVINO_PRECISIONS and CPU in env.ort_providers:
            # OpenVINO by the CPU's features: kept only where its frame is faster than ONNX Runtime's (measured once)
            remembered = remembered_choice(self.bundle, self.choice)
            measure = remembered is None
            self.choice = remembered or self.choice
        self.runners: dict[str, Runner] = open_runners(
            self.bundle, self.manifest, self.choice, threads=threads, cuda_graph=cuda_graph
        )
        if measure:
            ort = BackendChoice(BackendKind.ORT_CPU, "measured against OpenVINO")
            self.choice, self.runners = measured_cpu_choice(
                self.bundle, self.manifest, self.choice, self.runners,
                lambda: open_runners(self.bundle, self.manifest, ort, threads=threads),
            )  # fmt: skip
        self._loop = DenoisingLoop(self.manifest, self.runners)

    @classmethod
    def from_runners(cls, manifest: Manifest, runners: Mapping[str, Runner], choice: BackendChoice) -> "Pipeline":
        """A pipeline over runners opened elsewhere (e.g. graphs served by Triton, called from a BLS model).

        ``runners`` must hold every graph of ``RUNTIME_GRAPHS``, already active; ``choice`` says where they run.
        """
        missing = [g for g in RUNTIME_GRAPHS if g not in runners]
        if missing:
            raise ValueError(f"a pipeline needs runners for {list(RUNTIME_GRAPHS)}; missing {missing}")
        pipeline = cls.__new__(cls)
        pipeline.bundle = None  # type: ignore[assignment]
        pipeline.manifest = manifest
        pipeline.choice = choice
        pipeline.runners = dict(runners)
        pipeline._loop = DenoisingLoop(manifest, pipeline.runners)
        return pipeline

    def replace_runners(self, runners: Mapping[str, Runner]) -> None:
        """Swap the runners of some graphs (e.g. for wrappers that record or probe their calls).

        The new runners are closed with the pipeline; the replaced ones are not deactivated here (a wrapper
        usually still uses the runner it wraps). The loop's modulation cache starts empty, so every call after
        the swap reaches the new runners.

        Args:
            runners: graph name -> active runner, for graphs this pipeline already has.
        """
        unknown = sorted(set(runners) - set(self.runners))
        if unknown:
            raise ValueError(f"cannot replace runners of {unknown}: the pipeline has {sorted(self.runners)}")
        self.runners.update(runners)
        self._loop = DenoisingLoop(self.manifest, self.runners)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        deactivate_runners(self.runners.values())

    @property
    def resolution(self) -> int:
        return self.manifest.model.resolution

    def latent_shape(self, n: int) -> tuple[int, int, int, int]:
        return self.manifest.latent_shape(n)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 at the model resolution -> scaled latent means (N, 4, h, w) float32."""
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
        step = self.manifest.dims[BATCH_DIM].max
        parts = [self.runners["vae_encoder"].infer({"image": x[i : i + step]})["latent"] for i in range(0, len(x), step)]
        return np.concatenate(parts)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(V, 4, h, w) scaled latents -> (V, H, W, 3) uint8 ((x + 1) / 2 * 255, clamped, as the release)."""
        step = self.manifest.dims[DECODE_DIM].max
        parts = [
            self.runners["vae_decoder"].infer({"latent": np.ascontiguousarray(latents[i : i + step], dtype=np.float32)})["image"]
            for i in range(0, len(latents), step)
        ]
        images = np.concatenate(parts)  # (V, 3, H, W) in [-1, 1]
        if not np.isfinite(images).all():  # NaN would become black pixels silently (the uint8 cast)
            where = "the vae_decoder graph" if np.isfinite(latents).all() else "the denoiser (its latents)"
            raise NonFiniteOutputError(
                f"{where} produced NaN or Inf: either the bundle's weights are not finite (re-export it from finite "
                "weights; export and convert refuse non-finite ones) or the request's inputs overflow"
            )
        return np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    def sample(
        self,
        noise: np.ndarray,
        labels: np.ndarray | None = None,
        condition: np.ndarray | None = None,
        condition_index: int | None = None,
        sampler: SamplerConfig | None = None,
        cfg_scale: float = 1.0,
        step_noise: list[np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Run the sampler from ``noise`` to the final latents.

        Args:
            noise: starting noise (N, M*C, h, w) float32 (see :meth:`latent_shape`).
            labels: class labels (N,) int; None = the null label (unconditional).
            condition: scaled latent of the condition modality (N, C, h, w), or None for category generation.
            condition_index: the condition's modality index in the manifest's order (required with ``condition``).
            sampler: the sampler (default: the manifest's).
            cfg_scale: classifier-free guidance scale (1 = none).
            step_noise: Euler-Maruyama only: the z of each noisy step (see :meth:`step_noise`); drawn from ``rng``
                when None.
            rng: generator for the step noise when ``step_noise`` is None.

        Returns:
            Final latents (N, M*C, h, w) float32.
        """
        return self._loop.sample(
            noise, labels=labels, condition=condition, condition_index=condition_index, sampler=sampler,
            cfg_scale=cfg_scale, step_noise=step_noise, rng=rng,
        )  # fmt: skip

    def step_noise(self, sampler: SamplerConfig, rngs: list[np.random.Generator], rows: int = 1) -> list[np.ndarray] | None:
        """The Euler-Maruyama step noise for :meth:`sample` (None for the ODE samplers).

        Args:
            sampler: the sampler that will run.
            rngs: one generator per sample group; ``rows`` draws from each, stacked in order, per noisy step.
            rows: samples per generator.

        Returns:
            One (len(rngs) * rows, M*C, h, w) float32 array per noisy step, or None.
        """
        return self._loop.step_noise(sampler, rngs, rows)

    def split_modalities(self, latents: np.ndarray) -> dict[str, np.ndarray]:
        """(N, M*C, h, w) -> {modality: (N, C, h, w)} in the manifest's order."""
        c = self.manifest.latent.channels_per_modality
        return {name: latents[:, i * c : (i + 1) * c] for i, name in enumerate(self.manifest.modalities)}
