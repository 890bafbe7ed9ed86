"""Capture the inputs the graphs really see: the FP32 pipeline run on calibration images, every step recorded.

    capture = capture_calibration_feeds("bundles/fp32", iter_calibration_images("demo:64", 64), "work/capture")
    reader = capture.reader("denoiser_cached")      # an onnxruntime CalibrationDataReader over the shards

The bundle is opened on ONNX Runtime (FP32) and its runners are wrapped in :class:`RecordingRunner`, which writes
every call's feeds to one ``.npz`` shard on disk before running it. Each batch of images is perceived (rgb
condition) once per schedule in ``steps`` (default K = 1, 2 and 4), so ``denoiser_cached`` is recorded at every
timestep of every schedule: t = 1 (pure noise) down to the last step of the finest schedule. Only one batch of
images and one call's feeds are in memory at a time, however long the source; the shards are streamed back one at
a time by :class:`ShardDataReader`. The capture's SHA-256 (over every recorded tensor, in order) identifies the
calibration set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from tqdm.auto import tqdm

from mmgen_edge.runtime.fileio import write_text_atomic
from mmgen_edge.runtime.modalities import IMAGE_MODALITY, perception_modalities
from mmgen_edge.runtime.pipeline import Pipeline
from mmgen_edge.runtime.runner import Runner
from mmgen_edge.sdk.images import load_image, to_model_size

#: Schedules run on every calibration batch, so that every timestep range is represented.
DEFAULT_STEPS: tuple[int, ...] = (1, 2, 4)
#: Graphs recorded by default (the conditioning graph stays FP32 but its inputs are cheap to keep).
DEFAULT_CAPTURE_GRAPHS: tuple[str, ...] = ("conditioning", "denoiser_cached")
#: Graphs that can be recorded.
CAPTURABLE_GRAPHS: tuple[str, ...] = ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder")
#: Base seed of the sampler noise of the calibration runs (one stream per batch).
CAPTURE_NOISE_SEED = 0
#: The capture's index, written next to the shards.
INDEX_FILE = "capture.json"
#: Perception modalities decoded when the VAE decoder is recorded (the SDK's ``perceive`` decodes these).


@dataclass(frozen=True)
class CaptureRecord:
    """One recorded graph call: its shard file (relative to the capture directory) and where it came from."""

    graph: str
    file: str
    rows: int
    steps: int | None = None  # K of the schedule being sampled (None outside the loop)
    t_cur: float | None = None  # the step's schedule point (largest per-modality timestep of the call)
    t_next: float | None = None


@dataclass
class CaptureSet:
    """Recorded feeds of a calibration run (shards on disk) and their provenance."""

    directory: Path
    records: list[CaptureRecord] = field(default_factory=list)
    images: int = 0
    steps: tuple[int, ...] = DEFAULT_STEPS
    sha256: str = ""  # over every recorded tensor (name, dtype, shape, bytes), in recording order
    images_sha256: str = ""  # over the calibration images (shape, pixels), in order

    def records_for(self, graph: str) -> list[CaptureRecord]:
        return [r for r in self.records if r.graph == graph]

    def timesteps(self, graph: str = "denoiser_cached", steps: int | None = None) -> list[float]:
        """Distinct schedule points recorded for ``graph`` (optionally of one schedule), high to low."""
        points = {r.t_cur for r in self.records_for(graph) if r.t_cur is not None and steps in (None, r.steps)}
        return sorted(points, reverse=True)

    def reader(self, graph: str) -> "ShardDataReader":
        records = self.records_for(graph)
        if not records:
            raise ValueError(f"nothing was captured for {graph!r} (captured: {sorted({r.graph for r in self.records})})")
        return ShardDataReader([self.directory / r.file for r in records])

    def save(self) -> None:
        payload = {
            "images": self.images,
            "steps": list(self.steps),
            "sha256": self.sha256,
            "images_sha256": self.images_sha256,
            "records": [asdict(r) for r in self.records],
        }
        write_text_atomic(self.directory / INDEX_FILE, json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "CaptureSet":
        directory = Path(directory)
        index = directory / INDEX_FILE
        if not index.is_file():
            raise FileNotFoundError(f"{directory} is not a calibration capture ({INDEX_FILE} is missing)")
        raw = json.loads(index.read_text())
        return cls(
            directory=directory,
            records=[CaptureRecord(**r) for r in raw["records"]],
            images=raw["images"],
            steps=tuple(raw["steps"]),
            sha256=raw["sha256"],
            images_sha256=raw["images_sha256"],
        )


class ShardDataReader(CalibrationDataReader):
    """Streams recorded feeds back, one shard (one graph call) per ``get_next()``; supports ``set_range``."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)
        self.start, self.end = 0, len(self.files)
        self.position = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = max(0, start_index), min(len(self.files), end_index)
        self.position = self.start

    def rewind(self) -> None:
        self.position = self.start

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.end:
            return None
        with np.load(self.files[self.position]) as shard:
            feeds = {name: shard[name] for name in shard.files}
        self.position += 1
        return feeds


class FeedRecorder:
    """Writes each recorded call's feeds to ``directory/<graph>/<n>.npz`` and hashes them in order."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.records: list[CaptureRecord] = []
        self.steps: int | None = None  # the schedule being sampled; set by the capture loop
        self._digest = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def record(self, graph: str, feeds: Mapping[str, np.ndarray]) -> None:
        folder = self.directory / graph
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"{graph}/{len(self.records):07d}.npz"
        arrays = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        np.savez(self.directory / relative, **arrays)
        self._digest.update(graph.encode())
        for name in sorted(arrays):
            array = arrays[name]
            self._digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            self._digest.update(array.tobytes())
        t_cur, t_next = _schedule_points(arrays)
        rows = int(next(iter(arrays.values())).shape[0]) if arrays else 0
        in_loop = graph in ("conditioning", "denoiser_cached")
        self.records.append(CaptureRecord(graph, relative, rows, self.steps if in_loop else None, t_cur, t_next))


def _schedule_points(feeds: Mapping[str, np.ndarray]) -> tuple[float | None, float | None]:
    """The call's schedule points: the largest per-modality timestep (the condition slot holds a small t)."""
    if "t_cur" in feeds:
        return float(feeds["t_cur"].max()), float(feeds["t_next"].max())
    if "t" in feeds:
        return float(feeds["t"].max()), None
    return None, None


class RecordingRunner(Runner):
    """Wraps an active runner: records every call's feeds with a :class:`FeedRecorder`, then runs them."""

    def __init__(self, inner: Runner, recorder: FeedRecorder):
        super().__init__(inner.graph_name, inner.graph, inner.dims)
        self.inner = inner
        self.recorder = recorder
        self.backend = inner.backend
        self.active = inner.active

    def _activate(self) -> None:
        self.inner.activate()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.recorder.record(self.graph_name, feeds)
        return self.inner.infer(feeds)

    def _deactivate(self) -> None:
        self.inner.deactivate()


def wrap_runners(runners: Mapping[str, Runner], recorder: FeedRecorder, graphs: Iterable[str]) -> dict[str, Runner]:
    """A copy of ``runners`` in which the ``graphs`` record their feeds."""
    graphs = set(graphs)
    return {name: RecordingRunner(r, recorder) if name in graphs else r for name, r in runners.items()}


def batches(images: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Lists of up to ``size`` images, pulled lazily from ``images`` (one batch in memory at a time)."""
    iterator = iter(images)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_capture_args(steps: Sequence[int], graphs: Sequence[str]) -> None:
    if not steps or any(not isinstance(k, int) or k < 1 for k in steps):
        raise ValueError(f"steps must be positive integers, got {list(steps)}")
    unknown = [g for g in graphs if g not in CAPTURABLE_GRAPHS]
    if unknown:
        raise ValueError(f"cannot capture {unknown}; choose from {list(CAPTURABLE_GRAPHS)}")


def capture_calibration_feeds(
    bundle: str | Path,
    images: Iterable[np.ndarray],
    out_dir: str | Path,
    steps: Sequence[int] = DEFAULT_STEPS,
    graphs: Sequence[str] = DEFAULT_CAPTURE_GRAPHS,
    batch_size: int | None = None,
    seed: int = CAPTURE_NOISE_SEED,
    backend: str = "ort-cpu",
    threads: int | None = None,
    total: int | None = None,
    progress: bool = False,
) -> CaptureSet:
    """Perceive ``images`` with the FP32 bundle under every schedule in ``steps``, recording ``graphs``' feeds.

    ``batch_size`` defaults to the bundle's maximum batch; ``total`` (the expected image count) only sizes the
    progress bar. Returns the :class:`CaptureSet` (also saved as ``out_dir/capture.json``).
    """
    steps, graphs = tuple(steps), tuple(graphs)
    check_capture_args(steps, graphs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = FeedRecorder(out_dir)
    pixels = hashlib.sha256()
    count = 0
    with Pipeline(bundle, backend=backend, verify="size", threads=threads) as pipeline:
        batch_size = batch_size or pipeline.manifest.max_batch
        if not 1 <= batch_size <= pipeline.manifest.max_batch:
            raise ValueError(f"batch_size must be in 1..{pipeline.manifest.max_batch}, got {batch_size}")
        pipeline.replace_runners(wrap_runners(pipeline.runners, recorder, graphs))  # closed with the pipeline
        with tqdm(total=total, desc="capture", unit="image", disable=not progress) as bar:
            for index, chunk in enumerate(batches(images, batch_size)):
                model_images = _model_images(chunk, pipeline.resolution, count)
                pixels.update(model_images.tobytes())
                _capture_batch(pipeline, recorder, model_images, steps, "vae_decoder" in graphs, (seed, index))
                count += len(chunk)
                bar.update(len(chunk))
    if count == 0:
        raise ValueError("the calibration source yielded no image")
    capture = CaptureSet(out_dir, recorder.records, count, steps, recorder.sha256, pixels.hexdigest())
    capture.save()
    return capture


def _model_images(chunk: Sequence[np.ndarray], resolution: int, offset: int) -> np.ndarray:
    return np.stack([to_model_size(load_image(im, f"calibration image {offset + i}"), resolution) for i, im in enumerate(chunk)])


def _capture_batch(
    pipeline: Pipeline,
    recorder: FeedRecorder,
    model_images: np.ndarray,
    steps: Sequence[int],
    decode: bool,
    seed: tuple[int, int],
) -> None:
    """One batch: encode once, then sample (and optionally decode) under every schedule, all recorded."""
    manifest = pipeline.manifest
    recorder.steps = None
    rgb_latent = pipeline.encode(model_images)
    rgb = manifest.model.modality_index(IMAGE_MODALITY)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(pipeline.latent_shape(len(model_images)), dtype=np.float32)
    for k in steps:
        recorder.steps = k
        sampler = manifest.sampler.model_copy(update={"num_steps": k})
        latents = pipeline.sample(noise, condition=rgb_latent, condition_index=rgb, sampler=sampler, rng=rng)
        if decode:
            recorder.steps = None
            parts = pipeline.split_modalities(latents)
            pipeline.decode(np.concatenate([parts[m] for m in perception_modalities(manifest.modalities)]))
    recorder.steps = None

