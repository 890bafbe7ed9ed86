"""The bundle manifest: the contract between export and runtime (torch-free).

A bundle is a directory with ``manifest.json`` and the files it lists (ONNX graphs, their external data, TensorRT
engines). Shapes, modality order, latent scale and sampler settings are read from here, never re-typed. Loading
checks the schema version and, by default, every file's size and SHA-256, and explains any mismatch.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmgen_edge import __version__
from mmgen_edge.config import ModelConfig

from .fileio import sha256_file, write_text_atomic
from .sampler import SamplerConfig

MANIFEST_FILE = "manifest.json"
#: The schema this version writes. 2 added ``sampler.cfg_scale`` (the default guidance); a schema-1 manifest reads
#: as schema 2 with guidance 1 (no guidance, what every bundle did then). 3 added ``model.mask_palette`` (the fixed
#: colours a model paints segments with); a schema-1 or -2 manifest reads as schema 3 without one (random colours).
#: 4 added ``sampler.noise_scale`` (class generation's starting-noise scale); older manifests read with 1 (the
#: release's). Each bump makes an older mmgen-edge say "upgrade mmgen-edge" instead of failing on a field it does
#: not know.
SCHEMA_VERSION = 4
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4)
FORMAT_NAME = "mmgen-edge-bundle"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class TensorSpec(BaseModel):
    """One graph input or output: name, element type, shape (a string names a dynamic dimension)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dtype: Literal["float32", "float16", "int64", "int32"]
    shape: tuple[int | str, ...]


class GraphEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str  # the .onnx file, relative to the bundle
    external_data: str | None = None  # its weights file when stored outside the protobuf
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: Precision = Precision.FP32


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    bytes: int
    sha256: str


class LatentInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channels_per_modality: int
    height: int
    width: int
    scaling_factor: float = Field(gt=0, allow_inf_nan=False)  # latent = posterior mean * scaling_factor
    downsample: int  # image pixels per latent cell


class AutoencoderPart(BaseModel):
    """Where a bundle's ``vae_encoder`` or ``vae_decoder`` graph came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["AutoencoderKL", "AutoencoderTiny"]  # the diffusers class
    source: str  # the diffusers directory's name
    parameters: int  # of this half
    weights_sha256: str | None = None  # over the directory's weights files (``runtime.fileio.weights_sha256``)
    upsampling: int | None = None  # decoder only: its own output's pixels per latent cell (< downsample: resized)


class VaeInfo(BaseModel):
    """The bundle's VAE: the ``AutoencoderKL`` whose latent space the model was trained in, and where each VAE graph
    came from (``encoder`` / ``decoder``: that VAE's halves, or distilled ``AutoencoderTiny`` students). ``gate``
    holds the accuracy gate's report when a graph is a student's (``mmgen-edge export --decoder``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str  # "sd-vae-ft-mse", "shapes-demo", ... (the diffusers directory's name when unknown)
    scaling_factor: float = Field(gt=0, allow_inf_nan=False)
    parameters: int
    weights_sha256: str | None = None  # of this VAE's weights (``runtime.fileio.weights_sha256``)
    encoder: AutoencoderPart | None = None  # None in bundles written before students existed: the VAE's own
    decoder: AutoencoderPart | None = None
    gate: dict[str, object] | None = None

    @property
    def students(self) -> tuple[str, ...]:
        """The VAE graphs that do not come from this VAE's own weights (``"vae_encoder"``, ``"vae_decoder"``)."""
        parts = (("vae_encoder", self.encoder), ("vae_decoder", self.decoder))
        return tuple(graph for graph, part in parts if part is not None and (
            part.family != "AutoencoderKL" or part.weights_sha256 != self.weights_sha256))  # fmt: skip


class DimRange(BaseModel):
    """Range of one dynamic dimension (the optimisation-profile bounds TensorRT builds for)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(1, ge=1)
    opt: int = Field(1, ge=1)
    max: int = Field(8, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _opt_within(cls, data: object) -> object:
        """``opt`` is only a tuning hint: one outside ``min..max`` is clamped into it (bundles of 1- or 2-modality
        models were exported with V's opt 3 above a smaller max)."""
        if isinstance(data, dict) and all(isinstance(data.get(k), int) for k in ("min", "opt", "max")):
            data = {**data, "opt": min(max(data["opt"], data["min"]), data["max"])}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> "DimRange":
        if self.min > self.max:
            raise ValueError(f"needs min <= max, got min {self.min}, max {self.max}")
        return self


#: The largest batch a bundle may declare (``export --max-batch``): Triton's ``max_batch_size`` is an int32 and a
#: larger engine batch would not fit any device's memory at the release size anyway.
MAX_BATCH = 1024
#: Dynamic dimension symbols used in graph shapes: N = samples; B = modulation rows (N, or 2N with guidance);
#: V = images through the VAE decoder (up to one per modality per sample).
BATCH_DIM, MODULATION_DIM, DECODE_DIM = "N", "B", "V"
#: The largest fixed axis a graph tensor may declare (an image side of 16 384 px, a hidden size of 64 k).
MAX_TENSOR_AXIS = 65536


def dim_limits(num_modalities: int) -> dict[str, int]:
    """The largest ``max`` of each required dynamic dimension: N samples, B = 2N rows, V = one image per modality."""
    return {BATCH_DIM: MAX_BATCH, MODULATION_DIM: 2 * MAX_BATCH, DECODE_DIM: num_modalities * MAX_BATCH}


class EngineEntry(BaseModel):
    """A TensorRT engine built from one graph, valid only for this GPU model, compute capability and TensorRT."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    graph: str
    file: str
    precision: Precision
    trt_version: str
    device_name: str
    compute_capability: str
    strongly_typed: bool
    layer_precisions: dict[str, int]
    dims: dict[str, DimRange]
    built: str


class Provenance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    source_checkpoint_sha256: str | None = None
    source_release: str | None = None
    model_weights_sha256: str | None = None  # of the model directory's model.safetensors
    exporter_version: str = __version__
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["mmgen-edge-bundle"] = FORMAT_NAME
    schema_version: int = SCHEMA_VERSION
    model: ModelConfig
    latent: LatentInfo
    vae: VaeInfo
    sampler: SamplerConfig
    precision: Precision
    dims: dict[str, DimRange]  # every dynamic dimension symbol used in the graphs' shapes
    opset: int = Field(ge=1)
    graphs: dict[str, GraphEntry]
    files: tuple[FileEntry, ...]
    engines: tuple[EngineEntry, ...] = ()
    calibration: dict[str, object] | None = None
    provenance: Provenance = Provenance()

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.modalities

    @property
    def max_batch(self) -> int:
        return self.dims[BATCH_DIM].max

    def latent_shape(self, n: int) -> tuple[int, int, int, int]:
        """Shape of ``n`` samples' joint latents (all modalities): (n, M*C, h, w)."""
        return (n, self.model.in_channels, self.latent.height, self.latent.width)

    @model_validator(mode="after")
    def _check_paths(self) -> "Manifest":
        """Every file the manifest names is a plain relative path inside the bundle and is listed with its hash."""
        for entry in self.files:
            check_bundle_path(entry.path)
        listed = {entry.path for entry in self.files}
        named = [(f"graph {name}", g.file) for name, g in self.graphs.items()]
        named += [(f"graph {name}'s external data", g.external_data) for name, g in self.graphs.items()
                  if g.external_data is not None]  # fmt: skip
        named += [(f"engine for {e.graph}", e.file) for e in self.engines]
        for what, path in named:
            check_bundle_path(path)
            if path not in listed:
                raise ValueError(f"{what} names {path!r}, which is not listed (with its hash) in the manifest's files")
        return self

    @model_validator(mode="after")
    def _check_dims(self) -> "Manifest":
        """Every dimension a graph names is declared, each within the batch limits (N, B, V: ``dim_limits``).

        A missing symbol or an absurd bound is refused here, at read, instead of failing inside a call (a missing V
        after the whole sampler ran) or reaching a Triton config (whose ``max_batch_size`` is an int32).
        """
        limits = dim_limits(self.model.num_modalities)
        for symbol, bounds in self.dims.items():
            limit = limits.get(symbol, max(limits.values()))
            if bounds.max > limit:
                raise ValueError(f"dims {symbol!r} max {bounds.max} is above the limit {limit} (MAX_BATCH {MAX_BATCH})")
        for name, graph in self.graphs.items():
            for spec in (*graph.inputs, *graph.outputs):
                for axis in spec.shape:
                    if isinstance(axis, str) and axis not in self.dims:
                        raise ValueError(f"graph {name} tensor {spec.name} uses dimension {axis!r}, which dims does "
                                         f"not declare (declared: {sorted(self.dims)})")  # fmt: skip
                    if isinstance(axis, int) and not 1 <= axis <= MAX_TENSOR_AXIS:
                        raise ValueError(f"graph {name} tensor {spec.name} has axis {axis}, outside 1..{MAX_TENSOR_AXIS}")
        return self

    @model_validator(mode="after")
    def _check_shapes(self) -> "Manifest":
        """The latent grid follows from the model's resolution, and every graph's image/latent tensors agree with it.

        An edited resolution (or latent size) is refused here, at read, with the numbers that disagree, instead of
        failing later inside a backend.
        """
        problems = shape_problems(self)
        if problems:
            raise ValueError("inconsistent shapes: " + "; ".join(problems))
        return self

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(f"{path} is not listed in the manifest")


#: ONNX metadata key of the graphs that embed the class label: the rows of their label table (classes + the null
#: label). Written at export and compared with ``model.num_classes`` when a runner opens the graph, so an edited
#: class count is refused instead of silently sampling another class as "unconditional".
LABEL_ROWS_KEY = "mmgen_edge.label_rows"
#: The graphs that embed the class label.
LABELLED_GRAPHS = ("conditioning", "denoiser")


def graph_metadata(model: ModelConfig, graph_name: str) -> dict[str, str]:
    """The ONNX metadata that export writes into graph ``graph_name`` and the runtime checks (see LABEL_ROWS_KEY)."""
    return {LABEL_ROWS_KEY: str(model.num_classes + 1)} if graph_name in LABELLED_GRAPHS else {}


def metadata_problems(model: ModelConfig, graph_name: str, live: Mapping[str, str] | None) -> list[str]:
    """Where a graph's own metadata (``live``; None or a missing key: not recorded, nothing to check) disagrees
    with what the manifest's ``model`` implies."""
    if not live:
        return []
    problems = []
    for key, want in graph_metadata(model, graph_name).items():
        got = live.get(key)
        if got is not None and got != want:
            problems.append(f"graph {graph_name} records {key} = {got} (its label table), but the manifest's "
                            f"model.num_classes {model.num_classes} needs {want} (classes + the null label)")  # fmt: skip
    return problems


#: Graph tensors whose trailing dims (after the batch) follow from the manifest: "latents" is the joint latent of
#: all modalities (M*C, h, w), "vae_latent" one modality's latent (C, h, w), "image" an RGB image (3, H, W).
SHAPED_TENSORS: dict[str, dict[str, str]] = {
    "denoiser": {"x_t": "latents", "x_next": "latents", "x0_hat": "latents"},
    "denoiser_cached": {"x_t": "latents", "x_next": "latents", "x0_hat": "latents"},
    "vae_encoder": {"image": "image", "latent": "vae_latent"},
    "vae_decoder": {"latent": "vae_latent", "image": "image"},
}


def shape_problems(manifest: Manifest) -> list[str]:
    """Every inconsistency between the manifest's model, latent and graph shapes; [] when they agree.

    Args:
        manifest: a parsed manifest.

    Returns:
        One sentence per problem, naming the fields and numbers that disagree.
    """
    model, latent = manifest.model, manifest.latent
    problems = []
    if latent.downsample != model.vae_downsample:
        problems.append(f"latent.downsample {latent.downsample} differs from model.vae_downsample {model.vae_downsample}")
    if latent.channels_per_modality != model.latent_channels:
        problems.append(
            f"latent.channels_per_modality {latent.channels_per_modality} differs from model.latent_channels "
            f"{model.latent_channels}"
        )
    for axis, size in (("height", latent.height), ("width", latent.width)):
        if size * latent.downsample != model.resolution:
            problems.append(
                f"latent.{axis} {size} does not match model.resolution {model.resolution} / latent.downsample "
                f"{latent.downsample} = {model.resolution / latent.downsample:g}"
            )
    pixels = (latent.height * latent.downsample, latent.width * latent.downsample)
    trailing = {
        "latents": (model.in_channels, latent.height, latent.width),
        "vae_latent": (latent.channels_per_modality, latent.height, latent.width),
        "image": (3, *pixels),
    }
    for graph_name, tensors in SHAPED_TENSORS.items():
        graph = manifest.graphs.get(graph_name)
        if graph is None:
            continue
        for spec in (*graph.inputs, *graph.outputs):
            kind = tensors.get(spec.name)
            if kind is None:
                continue
            want = trailing[kind]
            if len(spec.shape) != 1 + len(want) or tuple(spec.shape[1:]) != want:
                problems.append(
                    f"graph {graph_name}: {spec.name} has shape {tuple(spec.shape)}, but the manifest's model and latent "
                    f"give (batch, {', '.join(map(str, want))})"
                )
    return problems


def check_bundle_path(path: str) -> None:
    """Refuse a manifest path that could leave the bundle: absolute, ``..``, backslashes or empty parts."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"manifest path {path!r} must be a plain relative path inside the bundle (no '..', no '/' at the start)")


VERIFY_MODES = ("full", "size", "none")


#: Longest shown value of a field that failed validation (a whole section would flood the one-line error).
MAX_SHOWN_VALUE = 60


def shortened(text: str, limit: int = MAX_SHOWN_VALUE) -> str:
    """``text`` cut to ``limit`` characters ("..." at the end when cut), for values shown in one-line errors."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's errors as one line: ``field: message (got value)`` per problem, joined by "; ", values shortened."""
    parts = []
    for item in error.errors():
        field = ".".join(str(x) for x in item.get("loc", ())) or "value"
        message = " ".join(str(item.get("msg", "invalid")).split())
        parts.append(f"{field}: {message} (got {shortened(repr(item.get('input')))})")
    return "; ".join(parts)


class BundleError(ValueError):
    """The bundle is missing, incomplete, tampered with or of an unsupported version; the message says which."""


def read_manifest(bundle: str | os.PathLike[str], verify: Literal["full", "size", "none"] = "full") -> Manifest:
    """Read and check ``bundle/manifest.json``: schema version, and each listed file's presence, size and SHA-256.

    ``verify="size"`` skips the hashing (fast start for multi-GB bundles); ``"none"`` only parses.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    bundle = Path(bundle)
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        hint = " (an interrupted export leaves no manifest)" if bundle.is_dir() else ""
        raise FileNotFoundError(f"{bundle} is not an mmgen-edge bundle: {MANIFEST_FILE} is missing{hint}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not UTF-8 text (byte {e.start}): not a manifest mmgen-edge wrote") from None
    manifest = parse_manifest(text, str(path))
    if verify != "none":
        verify_files(bundle, manifest, hashes=verify == "full")
    return manifest


def parse_manifest(text: str, source: str) -> Manifest:
    """A manifest from its JSON text (a bundle's file, or what a server sends), strictly: the format, a readable
    schema version (an older one is read as this one, its new fields at their defaults), types as the schema's.

    Raises:
        BundleError: naming ``source`` and what is wrong.
    """
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise BundleError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise BundleError(f"{source} is not an mmgen-edge bundle manifest (format is not {FORMAT_NAME!r})")
    version = raw.get("schema_version")
    if type(version) is not int or version not in READABLE_SCHEMA_VERSIONS:
        advice = "upgrade mmgen-edge" if isinstance(version, int) and version > SCHEMA_VERSION else "re-export the bundle"
        readable = ", ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
        raise BundleError(
            f"{source} has schema_version {version!r}; this mmgen-edge ({__version__}) reads {readable}: {advice}"
        )
    try:  # strict: a bool, a float or a string where the schema has an integer is an edit, not a value
        manifest = Manifest.model_validate_json(text, strict=True)
    except ValidationError as e:
        raise BundleError(f"{source} is not a valid manifest: {describe_validation_error(e)}") from None
    if manifest.schema_version != SCHEMA_VERSION:
        manifest = manifest.model_copy(update={"schema_version": SCHEMA_VERSION})
    return manifest


def verify_files(bundle: Path, manifest: Manifest, hashes: bool = True) -> None:
    """Every listed file exists with its recorded size (and SHA-256); raise :class:`BundleError` naming the file."""
    root = bundle.resolve()
    for entry in manifest.files:
        path = bundle / entry.path
        if root not in path.resolve().parents:
            raise BundleError(f"bundle {bundle}: {entry.path} resolves outside the bundle (a symbolic link?)")
        if not path.is_file():
            raise BundleError(f"bundle {bundle}: {entry.path} is listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"bundle {bundle}: {entry.path} has {size} bytes, the manifest says {entry.bytes}")
        if hashes:
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise BundleError(
                    f"bundle {bundle}: {entry.path} has SHA-256 {digest}, the manifest says {entry.sha256}: "
                    "the file was modified or corrupted; re-export or restore it"
                )


def file_entry(bundle: Path, relative: str) -> FileEntry:
    path = bundle / relative
    return FileEntry(path=relative, bytes=path.stat().st_size, sha256=sha256_file(path))


def write_manifest(bundle: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (:func:`~mmgen_edge.runtime.fileio.write_text_atomic`)."""
    write_text_atomic(Path(bundle) / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")
