"""The one model surface: what ``mmgen_edge.load()`` and ``mmgen_edge.connect()`` both return.

:class:`Model` is the abstract base of the local model (:class:`mmgen_edge.sdk.api.MMGenModel`) and the served one
(:class:`mmgen_edge.sdk.remote.RemoteModel`): the same ``perceive`` / ``generate`` / ``stream`` signatures, the
same properties and the same context manager, so code written against one runs against the other. The shared
parts (properties read from the manifest, ``stream``, ``with``) are implemented here once; each subclass
implements ``perceive``, ``generate``, ``close`` and ``backend`` with exactly the signatures declared here
(``tests/test_model_surface.py`` compares them with ``inspect.signature``). No torch.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mmgen_edge.runtime.manifest import Manifest
from mmgen_edge.runtime.modalities import PERCEPTION_TASKS

from .results import GenerationResult, PerceptionResult

if TYPE_CHECKING:
    from .stream import Stream


class Model(abc.ABC):
    """A bundle, loaded here or served elsewhere: ``perceive``, ``generate``, ``stream``; close it (or use ``with``).

    Attributes:
        manifest: the bundle's manifest (shapes, modality order, sampler, batch limit).
        steps: the default sampler steps of this handle (None: the bundle's/server's default).
    """

    manifest: Manifest
    steps: int | None

    # ------------------------------------------------------------------------------------ lifetime
    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend (sessions, engines) or the connection. Idempotent."""

    # ---------------------------------------------------------------------------------- properties
    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """Where the model runs: a backend name ("tensorrt", "ort-cuda", "ort-cpu", ...) or "remote"."""

    @property
    def resolution(self) -> int:
        """The model's image resolution R (inputs are resized to R x R)."""
        return self.manifest.model.resolution

    @property
    def num_classes(self) -> int:
        """Number of class labels ``generate`` accepts (0..num_classes - 1)."""
        return self.manifest.model.num_classes

    def latent_shape(self, n: int) -> tuple[int, int, int, int]:
        """Shape (n, M*C, h, w) of ``n`` samples' noise / latents (all modalities)."""
        return self.manifest.latent_shape(n)

    # ------------------------------------------------------------------------------------------ API
    @abc.abstractmethod
    def perceive(
        self,
        image: object,
        tasks: Sequence[str] = PERCEPTION_TASKS,
        steps: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        return_latents: bool = False,
    ) -> PerceptionResult | list[PerceptionResult]:
        """Depth, normals and/or segmentation of an image, at the image's resolution.

        Args:
            image: a path or an (H, W, 3) uint8 RGB array, or a list of those (one batch).
            tasks: any of "depth", "normals", "segmentation".
            steps: sampler steps (default: this handle's ``steps``).
            seed: seed of the starting noise (None: random).
            noise: explicit starting noise, (M*C, h, w) for every image or (N, M*C, h, w); overrides ``seed``.
            return_latents: keep the final latents in the result.

        Returns:
            One :class:`PerceptionResult`, or a list of them when ``image`` is a list.
        """

    @abc.abstractmethod
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
        """Generate rgb and the other maps, from a class label and/or one condition map.

        Args:
            class_label: 0..num_classes - 1, or None (unconditional).
            condition: one map: {"depth": disparity (H, W) float in [0, 1] (1 = nearest) or an encoded image},
                {"normals": unit normals (H, W, 3) float or an encoded image}, or {"segmentation": labels (H, W)
                int or a colour-painted image}.
            cfg_scale: classifier-free guidance scale on the class label, 0..100 (1 = none; None: the bundle's
                default, ``manifest.sampler.cfg_scale``).
            steps: sampler steps (default: this handle's ``steps``).
            seed: seed of the starting (and SDE step) noise (None: random).
            noise: explicit starting noise (M*C, h, w); overrides ``seed`` for the start.
            return_latents: keep the final latents in the result.

        Returns:
            A :class:`GenerationResult` (maps at the model resolution).
        """

    def guidance(self, cfg_scale: float | None) -> float:
        """The guidance scale a ``generate`` call runs with: ``cfg_scale`` as given (checked later), or the bundle's
        default (``manifest.sampler.cfg_scale``) when None."""
        return self.manifest.sampler.cfg_scale if cfg_scale is None else cfg_scale

    def stream(self, sources: object, **options: object) -> Stream:
        """Perceive live sources: a camera index, a video file, an RTSP/HTTP URL, an iterator of frames, or a list
        of those (their latest frames are batched into one call; a served model gets them as concurrent requests).

        Args:
            sources: the source(s).
            options: see :func:`mmgen_edge.sdk.stream.stream_frames` (tasks, steps, seed, realtime, max_pending).

        Returns:
            A :class:`~mmgen_edge.sdk.stream.Stream` (iterate it; close it or use ``with``).
        """
        from .stream import stream_frames

        return stream_frames(self, sources, **options)  # type: ignore[arg-type]
