"""OpenVINO runner: the bundle's ONNX graphs on the CPU plugin, fp32 or bf16, never a silent downgrade.

An INT8 graph in the Q/DQ form (``calibrate --target tensorrt``) runs its quantized MatMuls in int8 (OpenVINO's
low-precision transformations; the rest at the requested precision): the runner checks on the compiled model that
int8 kernels run them (``backend`` says ``int8+bf16``) and refuses a graph whose quantized layers would all run in
float, as ONNX Runtime's CPU form (MatMulInteger) would.

OpenVINO reads the bundle's ONNX files as they are. Precision is a request (``INFERENCE_PRECISION_HINT``) that this
runner always sets explicitly (on a CPU with AMX, OpenVINO's own default is bf16) and checks on the compiled model.
bf16 counts as supported only where the device lists ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (AVX512-BF16 or
AMX); elsewhere the plugin emulates it, slower than fp32, so :func:`openvino_runners` refuses it unless asked for
the emulation (accuracy checks on machines without bf16).

Compiled models are cached (OpenVINO's ``CACHE_DIR``) in one folder per key, ``cache/openvino/KEY`` inside the bundle,
or under the user's cache directory when the bundle is read-only or reached through a link. Each folder's
``blobs.json`` records the size and time of the blobs OpenVINO wrote; a blob it does not record as it is (left by a
killed compile, changed, copied in alone) is deleted and compiled again, never loaded in place of the checked
graph. The key names the graph, the OpenVINO version,
the device, the precision and the graph's SHA-256 (as TensorRT engines are keyed by TensorRT version and GPU), so
a stale blob is never in the folder that a new version, device, precision or graph reads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .manifest import LABEL_ROWS_KEY, DimRange, GraphEntry, Manifest, Precision
from .runner import EDITED_MANIFEST_HINT, INPUT, OUTPUT, Runner, activate_runners, check_live_io

OPENVINO_EXTRA_HINT = "install the openvino extra: pip install 'mmgen-edge[openvino]'"
DEVICE = "CPU"
#: Our precision names -> OpenVINO's element type names (``INFERENCE_PRECISION_HINT``).
OV_PRECISIONS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}
OpenVinoPrecision = Literal["fp32", "bf16"]


class PrecisionUnavailable(RuntimeError):
    """OpenVINO compiled a graph in another precision (or on another device) than requested: refused, never run.

    On a CPU without AVX-512 OpenVINO cannot even emulate bf16 and compiles f32 instead; this is that error."""
BUNDLE_CACHE_DIR = Path("cache") / "openvino"
BLOB_SUFFIX = ".blob"
_SLUG = re.compile(r"[^a-z0-9]+")


def import_openvino() -> ModuleType:
    """The ``openvino`` module, or an ImportError that names the extra to install."""
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f"the OpenVINO backend needs OpenVINO: {OPENVINO_EXTRA_HINT} ({e})") from None
    return openvino


@dataclass(frozen=True)
class OpenVinoInfo:
    """What OpenVINO offers on this machine's CPU (detected once; tests pass their own)."""

    version: str
    device_name: str  # FULL_DEVICE_NAME, e.g. "Intel(R) Xeon(R) Platinum 8480+"
    capabilities: tuple[str, ...]  # OPTIMIZATION_CAPABILITIES, e.g. ("FP32", "BF16", "INT8", ...)

    @property
    def bf16(self) -> bool:
        """True where the CPU runs bf16 natively (AVX512-BF16 or AMX), not emulated."""
        return "BF16" in self.capabilities

    def describe(self) -> str:
        """e.g. ``OpenVINO 2026.4.1 on Intel(R) Xeon(R) Processor (capabilities FP32, INT8)``."""
        return f"OpenVINO {self.version} on {self.device_name} (capabilities {', '.join(self.capabilities)})"


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept until exit (every runner compiles on it).

    One, not one per runner: each Core loads its own CPU plugin, and each plugin installs an alternate signal stack
    on the thread that creates it and restores the previous one when it is destroyed (OpenVINO 2024-2026:
    ``ov::intel_cpu::SigAltStackSetup``). Destroyed in any order but the reverse of creation, the plugins leave the
    thread's signal stack pointing at freed memory, and the next signal the process handles (SIGTERM to a server,
    Ctrl-C) kills it with SIGSEGV (measured: a closed OpenVINO pipeline, then SIGTERM).
    """
    return import_openvino().Core()


@functools.lru_cache(maxsize=1)
def detect_openvino() -> OpenVinoInfo | None:
    """OpenVINO's CPU facts, or None when OpenVINO is not installed (an installed but broken one raises).

    Read once per process (the machine does not change): every ``Pipeline`` calls it through ``detect_environment``.
    """
    if importlib.util.find_spec("openvino") is None:
        return None
    ov = import_openvino()
    core = openvino_core()
    version = str(ov.get_version()).split("-")[0]
    name = str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))
    capabilities = tuple(str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
    return OpenVinoInfo(version, name, capabilities)


def check_precision(info: OpenVinoInfo, precision: str, emulated_bf16: bool = False) -> None:
    """Raise ValueError for an unknown precision, or bf16 on a CPU without it (unless ``emulated_bf16``)."""
    if precision not in OV_PRECISIONS:
        raise ValueError(f"unknown OpenVINO precision {precision!r}; choose one of {list(OV_PRECISIONS)}")
    if precision == "bf16" and not info.bf16 and not emulated_bf16:
        raise RuntimeError(
            f"bf16 was requested but this CPU has no native bf16: {info.describe()} lacks BF16 (it needs AVX512-BF16 "
            "or AMX; OpenVINO would emulate it, slower than fp32); use backend='openvino-fp32' or 'openvino'"
        )


# ------------------------------------------------------------------------------------------------------ cache


def cache_key(graph_name: str, info: OpenVinoInfo, precision: str, graph_sha256: str) -> str:
    """Folder name of one compiled graph, e.g. ``vae_decoder.intel-r-xeon-r-processor-2-50ghz.ov2026.4.1.bf16.0a1b…``."""
    device = _SLUG.sub("-", info.device_name.lower()).strip("-") or "cpu"
    return f"{graph_name}.{device}.ov{info.version}.{precision}.{graph_sha256[:16]}"


def graph_sha256(manifest: Manifest, graph: GraphEntry) -> str:
    """SHA-256 of the graph as the manifest records it (its .onnx file, and its external data when it has any)."""
    digest = manifest.file(graph.file).sha256
    if graph.external_data is None:
        return digest
    return hashlib.sha256((digest + manifest.file(graph.external_data).sha256).encode()).hexdigest()


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/mmgen-edge/openvino`` (default ``~/.cache/mmgen-edge/openvino``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmgen-edge" / "openvino"


def cache_directory(bundle: Path, key: str) -> Path:
    """``BUNDLE/cache/openvino/KEY`` (created), or the user cache's ``KEY`` folder when the bundle's cannot be used:
    the bundle is read-only, or a folder on the way is a link (the cache would be written outside the bundle).
    Either way the folder holds only blobs its index records (:func:`drop_unrecorded_blobs`)."""
    inside = bundle / BUNDLE_CACHE_DIR / key
    usable = False
    try:
        if not any(p.is_symlink() for p in (bundle / "cache", bundle / BUNDLE_CACHE_DIR, inside)):
            inside.mkdir(parents=True, exist_ok=True)
            usable = os.access(inside, os.W_OK)
    except OSError:  # a read-only bundle (installed package, mounted volume): the user's cache instead
        usable = False
    folder = inside if usable else user_cache_root() / key
    folder.mkdir(parents=True, exist_ok=True)
    drop_unrecorded_blobs(folder)
    return folder


#: Beside the blobs of one cache folder: each blob this tool saw OpenVINO write, with its size and modification time.
BLOB_INDEX = "blobs.json"


def _blob_facts(folder: Path) -> dict[str, dict[str, int]]:
    """Compiled blobs in ``folder`` by name -> their size and modification time (ns)."""
    return {p.name: {"bytes": (st := p.stat()).st_size, "mtime_ns": st.st_mtime_ns}
            for p in sorted(folder.glob(f"*{BLOB_SUFFIX}"))}  # fmt: skip


def _recorded(folder: Path) -> dict[str, object]:
    import json

    try:
        recorded = json.loads((folder / BLOB_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def drop_unrecorded_blobs(folder: Path) -> list[str]:
    """Delete the blobs of ``folder`` (one of this tool's keyed cache folders) that its index does not record as they
    are (size and modification time); returns their names.

    A bundle's compiled models are not in its manifest. This keeps what OpenVINO would load from a blob in step
    with what this tool saw it write: a blob left by a compile that was killed, changed since, or copied in alone is
    removed (OpenVINO compiles again) instead of loaded in place of the checked graph. It guards against stale
    and partial blobs, not against a deliberately forged cache (which could forge the index too).
    """
    recorded, dropped = _recorded(folder), []
    for name, facts in _blob_facts(folder).items():
        if recorded.get(name) != facts:
            (folder / name).unlink(missing_ok=True)
            dropped.append(name)
    return dropped


def record_blobs(folder: Path) -> None:
    """Write ``folder``'s index of its blobs (atomically), after OpenVINO compiled into it."""
    import json

    from .fileio import write_text_atomic

    write_text_atomic(folder / BLOB_INDEX, json.dumps(_blob_facts(folder), indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------- runner


class OpenVinoRunner(Runner):
    """Run one bundle graph with OpenVINO on the CPU.

    Outputs are copied out of the infer request (``share_outputs=False``), so a result stays valid after the
    next call. After :meth:`activate`: ``cache_dir`` (the compiled-model folder), ``cache_hit`` (the compiled model
    was read from it, not compiled), ``compile_seconds``.

    Args:
        bundle: the bundle directory.
        precision: "fp32" or "bf16" (set as ``INFERENCE_PRECISION_HINT`` and checked on the compiled model).
        info: this machine's OpenVINO facts (:func:`detect_openvino`).
        graph_sha256: the graph's hash (:func:`graph_sha256`), part of the cache key.
        threads: ``INFERENCE_NUM_THREADS`` (None = OpenVINO's default).
        emulated_bf16: allow bf16 on a CPU without native bf16 (accuracy checks only: slower than fp32).
        cache: keep compiled models (``CACHE_DIR``); False compiles every time.
    """

    def __init__(
        self,
        bundle: str | Path,
        graph_name: str,
        graph: GraphEntry,
        dims: Mapping[str, DimRange],
        precision: str,
        info: OpenVinoInfo,
        graph_sha256: str,
        threads: int | None = None,
        emulated_bf16: bool = False,
        cache: bool = True,
    ):
        super().__init__(graph_name, graph, dims)
        check_precision(info, precision, emulated_bf16)
        self.bundle = Path(bundle)
        self.path = self.bundle / graph.file
        self.precision = precision
        self.info = info
        self.key = cache_key(graph_name, info, precision, graph_sha256)
        self.threads = threads
        self.cache = cache
        self.native = precision == "fp32" or info.bf16
        self.backend = f"openvino:{DEVICE}:{precision}" + ("" if self.native else " (emulated)")
        self.cache_dir: Path | None = None
        self.cache_hit = False
        self.compile_seconds = 0.0
        self.compiled: Any = None
        self.request: Any = None
        self.int8_layers = 0  # INT8 graphs: MatMuls / convolutions OpenVINO runs in int8 (set by activate)
        self._metadata: dict[str, str] | None = None

    def _activate(self) -> None:
        ov = import_openvino()
        core = openvino_core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as e:  # OpenVINO's message names neither the graph nor the backend
            raise RuntimeError(f"graph {self.graph_name} could not be loaded on {self.backend}: {e}") from e
        self._check_model(model)
        self._metadata = {key: model.get_rt_info(["framework", key]).astype(str) for key in (LABEL_ROWS_KEY,)
                          if model.has_rt_info(["framework", key])}  # ONNX metadata_props, as OpenVINO keeps them
        model.reshape({spec.name: self._partial_shape(ov, spec.shape) for spec in self.graph.inputs})
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        before: dict[str, dict[str, int]] = {}
        if self.cache:
            self.cache_dir = cache_directory(self.bundle, self.key)
            config["CACHE_DIR"] = str(self.cache_dir)
            before = _blob_facts(self.cache_dir)
        start = time.perf_counter()
        compiled = core.compile_model(model, DEVICE, config)
        self.compile_seconds = time.perf_counter() - start
        self.cache_hit = bool(before) and self.cache_dir is not None and _blob_facts(self.cache_dir) == before
        if self.cache_dir is not None and not self.cache_hit:
            record_blobs(self.cache_dir)
        got = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        want = str(getattr(ov.Type, OV_PRECISIONS[self.precision]))
        devices = list(compiled.get_property("EXECUTION_DEVICES"))
        if got != want or devices != [DEVICE]:
            raise PrecisionUnavailable(
                f"OpenVINO compiled {self.graph_name} for {got} on {devices}, not {want} on {DEVICE} as requested; "
                "refusing a silent downgrade"
            )
        if self.graph.precision == Precision.INT8:
            self.int8_layers, others = int8_layer_counts(compiled)
            if not self.int8_layers:
                raise PrecisionUnavailable(
                    f"OpenVINO runs none of the INT8 graph {self.graph_name}'s MatMuls / convolutions in int8 (they run "
                    f"{others or 'in float'}): only the Q/DQ form (calibrate --target tensorrt) runs int8 on OpenVINO; "
                    "refusing a silent downgrade to float"
                )  # fmt: skip
            self.backend = f"openvino:{DEVICE}:int8+{self.precision}"
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def _check_model(self, model: Any) -> None:
        """The live model's inputs and outputs agree with the manifest: the same check as every runner
        (:func:`~mmgen_edge.runtime.runner.check_live_io`: names, directions, dtypes, ranks, fixed sizes)."""
        io: dict[str, tuple[str, str]] = {}
        shapes: dict[str, list[int | None]] = {}
        for mode, ports in ((INPUT, model.inputs), (OUTPUT, model.outputs)):
            for port in ports:
                dtype = np.dtype(port.get_element_type().to_dtype()).name
                shape = port.get_partial_shape()
                dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
                for name in port.get_names():
                    io[name], shapes[name] = (mode, dtype), dims
        check_live_io(self.graph_name, self.graph, str(self.path), io, shapes, "graph", EDITED_MANIFEST_HINT)

    def _partial_shape(self, ov: ModuleType, shape: Iterable[int | str]) -> Any:
        """Fixed sizes as they are, each named dimension bounded by the manifest's range (unbounded without one)."""
        dims = []
        for size in shape:
            if isinstance(size, int):
                dims.append(ov.Dimension(size))
            elif size in self.dims:
                dims.append(ov.Dimension(self.dims[size].min, self.dims[size].max))
            else:
                dims.append(ov.Dimension())
        return ov.PartialShape(dims)

    def metadata(self) -> Mapping[str, str] | None:
        return self._metadata

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(dict(feeds), share_inputs=False, share_outputs=False)
        return {spec.name: np.asarray(results[self.compiled.output(spec.name)]) for spec in self.graph.outputs}

    def _deactivate(self) -> None:
        self.request = None
        self.compiled = None


#: Layers of OpenVINO's runtime model whose ``runtimePrecision`` says whether int8 kernels run them.
INT8_LAYER_TYPES = ("FullyConnected", "MatMul", "Convolution")


def int8_layer_counts(compiled: Any) -> tuple[int, dict[str, int]]:
    """(layers of INT8_LAYER_TYPES that run in i8 / u8, the others by runtime precision) of a compiled model."""
    int8, others = 0, {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in INT8_LAYER_TYPES:
            continue
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "unknown"
        if precision in ("i8", "u8"):
            int8 += 1
        else:
            others[precision] = others.get(precision, 0) + 1
    return int8, others


def openvino_runners(
    bundle: str | Path,
    manifest: Manifest,
    graphs: Iterable[str],
    precision: str,
    info: OpenVinoInfo,
    threads: int | None = None,
    emulated_bf16: bool = False,
) -> dict[str, Runner]:
    """Create and activate one :class:`OpenVinoRunner` per graph (all deactivated again if one fails).

    Args:
        precision: "fp32" or "bf16"; bf16 needs native support unless ``emulated_bf16`` (see :func:`check_precision`).
        info: this machine's OpenVINO facts (:func:`detect_openvino`).

    Returns:
        The active runners by graph name.
    """
    check_precision(info, precision, emulated_bf16)
    return activate_runners(
        manifest, graphs,
        lambda name, graph: OpenVinoRunner(bundle, name, graph, manifest.dims, precision, info,
                                           graph_sha256(manifest, graph), threads, emulated_bf16),
    )  # fmt: skip
