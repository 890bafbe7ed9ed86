"""Build the TensorRT engines of a whole bundle and record them in its manifest.

    build_bundle_engines("bundles/mmgen-fp16", "fp16")

One engine per graph and GPU model: engines are only valid for the GPU model, compute capability and TensorRT
version they were built with, so their file names carry all three and several GPUs can share one bundle::

    engines/{graph}.{gpu-name}.sm{major}{minor}.trt{version}.{precision}.engine

The files hold the plain serialized plan (no header or metadata: ``trtexec --loadEngine`` and Triton load them as
is); what they are is recorded in the manifest (``engines`` entries, and ``files`` with size and SHA-256).

Reuse and replacement (decided by the pure :func:`plan_engine_builds`): an existing entry for this graph and GPU
is reused when its TensorRT version and precision match and its file is intact (recorded size and SHA-256);
otherwise it is rebuilt. Every other entry for the same graph and GPU (another TensorRT version, another
precision, a damaged file) is removed from the manifest and its file deleted: the runtime (``runtime.backend``)
picks one engine per graph and GPU, and a stale one must never be picked. Entries of other GPUs are untouched.

Crash safety: before a graph is (re)built its old entries are dropped from the manifest (written atomically), and
the new entry is added only after the engine file was written, so an interrupted build never leaves a manifest
that lists a file with the wrong hash. Each manifest update re-reads the manifest from disk under a lock file, so
two processes (two GPUs) building into one bundle do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal, NamedTuple

from tqdm.auto import tqdm

from mmgen_edge.runtime import gpu
from mmgen_edge.runtime.fileio import sha256_file
from mmgen_edge.runtime.manifest import (
    DimRange,
    EngineEntry,
    FileEntry,
    GraphEntry,
    Manifest,
    Precision as ManifestPrecision,
    file_entry,
    read_manifest,
    write_manifest,
)

from .tensorrt_build import (
    EngineReport,
    Precision,
    ShapeProfile,
    build_engine,
    plan_build,
    tensorrt_capabilities,
)
from .tensorrt_op_table import BASELINE_TRT_VERSION
from .tensorrt_support import check_tensorrt_support, format_issues

__all__ = [
    "DEFAULT_ENGINE_GRAPHS",
    "ENGINE_DIR",
    "BuildEnvironment",
    "EngineAction",
    "build_bundle_engines",
    "engine_file_name",
    "graph_is_annotated",
    "plan_engine_builds",
    "shape_profiles",
]

log = logging.getLogger(__name__)

#: The graphs the runtime runs (``runtime.backend.RUNTIME_GRAPHS``).
DEFAULT_ENGINE_GRAPHS = ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder")
ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".engine"
LOCK_FILE = ".manifest.lock"
REUSE, BUILD, REBUILD = "reuse", "build", "rebuild"
#: Precisions whose graphs carry their types (fp16 casts, Q/DQ nodes): TensorRT builds them strongly typed.
ANNOTATED_PRECISIONS = frozenset({ManifestPrecision.FP16, ManifestPrecision.INT8})
_SLUG = re.compile(r"[^a-z0-9]+")

Action = Literal["reuse", "build", "rebuild"]


class BuildEnvironment(NamedTuple):
    """The facts an engine is valid for (same spelling as ``runtime.backend.Environment``)."""

    trt_version: str
    device_name: str
    compute_capability: str


def build_environment() -> BuildEnvironment:
    """The GPU identity engines are built for here: the current CUDA device and the installed TensorRT.

    Read by :func:`mmgen_edge.runtime.gpu.gpu_identity`, as ``runtime.backend.detect_environment`` reads it for
    matching, so an engine built here is one that matching accepts on the same device.
    """
    identity = gpu.gpu_identity()
    return BuildEnvironment(identity.tensorrt_version, identity.device_name, identity.compute_capability)


class EngineAction(NamedTuple):
    """What :func:`build_bundle_engines` will do for one graph, and why."""

    graph: str
    action: Action
    reason: str


# ------------------------------------------------------------------------------------------- pure decisions


def engine_file_name(graph: str, env: BuildEnvironment, precision: str) -> str:
    """Bundle-relative engine path, e.g. ``engines/vae_decoder.nvidia-h100-80gb-hbm3.sm90.trt10.13.0.fp16.engine``."""
    device = _SLUG.sub("-", env.device_name.lower()).strip("-") or "gpu"
    capability = env.compute_capability.replace(".", "")
    return f"{ENGINE_DIR}/{graph}.{device}.sm{capability}.trt{env.trt_version}.{Precision(precision).value}{ENGINE_SUFFIX}"


def _for_this_gpu(entry: EngineEntry, graph: str, env: BuildEnvironment) -> bool:
    return (
        entry.graph == graph
        and entry.device_name == env.device_name
        and entry.compute_capability == env.compute_capability
    )


def _matches(entry: EngineEntry, env: BuildEnvironment, precision: Precision) -> bool:
    return entry.trt_version == env.trt_version and entry.precision.value == precision.value


def current_engine(manifest: Manifest, graph: str, env: BuildEnvironment, precision: Precision) -> EngineEntry | None:
    """The (last) entry for ``graph`` on this GPU with this TensorRT version and precision, if any."""
    matching = [e for e in manifest.engines if _for_this_gpu(e, graph, env) and _matches(e, env, precision)]
    return matching[-1] if matching else None


def _describe(entry: EngineEntry) -> str:
    return f"{entry.file} (TensorRT {entry.trt_version}, {entry.precision.value})"


def plan_engine_builds(
    manifest: Manifest,
    env: BuildEnvironment | tuple[str, str, str],
    precision: str,
    graphs: Iterable[str],
    bundle_files_ok: Callable[[str], bool],
    rebuild: bool = False,
) -> list[EngineAction]:
    """Per graph: reuse its engine for this GPU, build a first one, or rebuild (replacing stale entries).

    ``env``: (TensorRT version, GPU name, compute capability) of this machine. ``bundle_files_ok(path)``: the
    bundle-relative file exists with the size and SHA-256 the manifest records. Raises ``ValueError`` for a graph
    the bundle does not have.
    """
    env = BuildEnvironment(*env)
    want = Precision(precision)
    actions = []
    for graph in graphs:
        if graph not in manifest.graphs:
            raise ValueError(f"the bundle has no {graph!r} graph (it has {sorted(manifest.graphs)})")
        here = [e for e in manifest.engines if _for_this_gpu(e, graph, env)]
        current = current_engine(manifest, graph, env, want)
        stale = [e for e in here if e is not current]
        replaces = f"; replaces {', '.join(_describe(e) for e in stale)}" if stale else ""
        if not here:
            actions.append(EngineAction(graph, BUILD, f"no engine for {env.device_name} (sm {env.compute_capability})"))
        elif current is None:
            actions.append(EngineAction(graph, REBUILD, f"stale: no {want.value} engine for TensorRT {env.trt_version}{replaces}"))
        elif rebuild:
            actions.append(EngineAction(graph, REBUILD, f"rebuild requested{replaces}"))
        elif not bundle_files_ok(current.file):
            actions.append(
                EngineAction(graph, REBUILD, f"{current.file} is missing or differs from its manifest size/SHA-256{replaces}")
            )
        else:
            actions.append(EngineAction(graph, REUSE, f"{current.file} matches this GPU, TensorRT and precision{replaces}"))
    return actions


def graph_is_annotated(manifest: Manifest, graph: str) -> bool:
    """Whether the graph already carries its precision (fp16 casts or Q/DQ), see ``tensorrt_build.plan_build``.

    Read from the graph's own entry, not ``manifest.precision``: calibration marks only the graphs it quantized
    int8 (the bundle says int8, its VAE graphs may stay fp32), while an fp16 export marks every graph fp16.
    """
    return manifest.graphs[graph].precision in ANNOTATED_PRECISIONS


def shape_profiles(graph: GraphEntry, dims: Mapping[str, DimRange]) -> list[ShapeProfile]:
    """One :class:`ShapeProfile` per input with a dynamic dimension, from the manifest's symbol ranges.

    Static dimensions stay as they are; a symbol missing from ``dims`` is a ``ValueError``.
    """
    profiles = []
    for spec in graph.inputs:
        symbols = [d for d in spec.shape if isinstance(d, str)]
        if not symbols:
            continue
        unknown = sorted(set(symbols) - dims.keys())
        if unknown:
            raise ValueError(f"input {spec.name!r} {spec.shape}: dimension(s) {unknown} have no range in the manifest's dims")

        def bound(which: str) -> tuple[int, ...]:
            return tuple(getattr(dims[d], which) if isinstance(d, str) else int(d) for d in spec.shape)

        profiles.append(ShapeProfile(spec.name, bound("min"), bound("opt"), bound("max")))
    return profiles


def graph_dims(graph: GraphEntry, dims: Mapping[str, DimRange]) -> dict[str, DimRange]:
    """The ranges of the dynamic dimensions the graph's inputs use (what its engine was built for)."""
    used = {d for spec in graph.inputs for d in spec.shape if isinstance(d, str)}
    return {symbol: dims[symbol] for symbol in sorted(used)}


def without_engines(manifest: Manifest, graph: str, env: BuildEnvironment, keep: str | None = None) -> tuple[Manifest, list[str]]:
    """Drop this GPU's entries for ``graph`` (except the one whose file is ``keep``) and their file entries.

    Returns the new manifest and the removed engine files no remaining entry refers to (to delete).
    """
    dropped = [e for e in manifest.engines if _for_this_gpu(e, graph, env) and e.file != keep]
    if not dropped:
        return manifest, []
    engines = tuple(e for e in manifest.engines if e not in dropped)
    still_used = {e.file for e in engines} | {g.file for g in manifest.graphs.values()}
    orphans = sorted({e.file for e in dropped} - still_used)
    files = tuple(f for f in manifest.files if f.path not in orphans)
    return manifest.model_copy(update={"engines": engines, "files": files}), orphans


def with_engine(manifest: Manifest, entry: EngineEntry, file: FileEntry) -> Manifest:
    """Add ``entry`` and its file entry (replacing any entry with the same file)."""
    engines = tuple(e for e in manifest.engines if e.file != entry.file) + (entry,)
    files = tuple(f for f in manifest.files if f.path != file.path) + (file,)
    return manifest.model_copy(update={"engines": engines, "files": files})


def engine_entry(graph: str, file: str, report: EngineReport, dims: Mapping[str, DimRange]) -> EngineEntry:
    """The manifest entry of an engine just built (``built`` is now, UTC)."""
    return EngineEntry(
        graph=graph,
        file=file,
        precision=ManifestPrecision(report.precision.value),
        trt_version=report.trt_version,
        device_name=report.device_name,
        compute_capability=report.compute_capability,
        strongly_typed=report.strongly_typed,
        layer_precisions=dict(report.layer_precisions),
        dims=dict(dims),
        built=_dt.datetime.now(_dt.timezone.utc).isoformat(),
    )


def trt_major_minor(version: str) -> tuple[int, int]:
    """'10.13.0.35' -> (10, 13)."""
    numbers = [int(m.group()) for m in (re.match(r"\d+", part) for part in version.split(".")[:2]) if m]
    if not numbers:
        raise ValueError(f"cannot read a TensorRT version from {version!r}")
    return (numbers[0], numbers[1] if len(numbers) > 1 else 0)


# --------------------------------------------------------------------------------------------- bundle I/O


def file_ok(bundle: Path, manifest: Manifest, relative: str) -> bool:
    """``relative`` is listed in the manifest and the file on disk has its size and SHA-256."""
    path = bundle / relative
    try:
        listed = manifest.file(relative)
    except KeyError:
        return False
    return path.is_file() and path.stat().st_size == listed.bytes and sha256_file(path) == listed.sha256


def _verify_sources(bundle: Path, manifest: Manifest, graphs: Iterable[str]) -> None:
    """The ONNX files (and external data) of ``graphs`` are intact; raises naming the damaged file."""
    for graph in graphs:
        entry = manifest.graphs[graph]
        for relative in filter(None, (entry.file, entry.external_data)):
            if not file_ok(bundle, manifest, relative):
                raise ValueError(
                    f"bundle {bundle}: {relative} (graph {graph!r}) is missing or differs from its manifest "
                    "size/SHA-256: re-export the bundle"
                )


@contextlib.contextmanager
def _manifest_lock(bundle: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``bundle/.manifest.lock`` (POSIX ``flock``; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent builders into one bundle are then unsupported
        yield
        return
    with open(bundle / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _update_manifest(bundle: Path, change: Callable[[Manifest], tuple[Manifest, list[str]]]) -> Manifest:
    """Re-read the manifest under the lock, apply ``change``, write it atomically, then delete orphaned files."""
    with _manifest_lock(bundle):
        current = read_manifest(bundle, verify="none")
        updated, orphans = change(current)
        if updated is not current:
            write_manifest(bundle, updated)
    for relative in orphans:
        path = bundle / relative
        if path.is_file():
            path.unlink()
            log.info("deleted stale engine %s", relative)
    return updated


# ------------------------------------------------------------------------------------------------- building


def _preflight(
    bundle: Path, manifest: Manifest, graphs: list[str], precision: Precision, caps: Mapping[str, bool], trt_version: str
) -> None:
    """Before building anything: every graph's precision route is possible and TensorRT can parse it."""
    problems = []
    check_version = max(trt_major_minor(trt_version), BASELINE_TRT_VERSION)
    for graph in graphs:
        try:
            plan_build(precision, caps, graph_is_annotated(manifest, graph))
        except ValueError as exc:
            problems.append(f"{graph}: {exc}")
            continue
        shape_profiles(manifest.graphs[graph], manifest.dims)  # raises on a dimension without a range
        issues = check_tensorrt_support(bundle / manifest.graphs[graph].file, trt_version=check_version)
        if issues:
            problems.append(f"{graph}: {len(issues)} TensorRT ONNX-parser issue(s):\n{format_issues(issues)}")
    if problems:
        raise ValueError(f"cannot build {precision.value} engines for bundle {bundle}:\n" + "\n".join(problems))


def build_bundle_engines(
    bundle: str | Path,
    precision: str,
    graphs: Iterable[str] = DEFAULT_ENGINE_GRAPHS,
    timing_cache: Path | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> list[EngineEntry]:
    """Build (or reuse) this GPU's engines for ``graphs`` of ``bundle``; returns their manifest entries in order.

    ``precision``: "fp32", "fp16" or "int8" (see ``tensorrt_build.plan_build`` for what each needs of the graph;
    in a calibrated int8 bundle only the quantized graphs can be built int8, pass the others in a second call).
    ``timing_cache``: a TensorRT timing cache file shared by the builds (created, then updated). ``rebuild``: build
    even when a matching engine exists. Fails before building anything when a graph cannot be built (precision
    route, ONNX-parser issues, damaged ONNX files).
    """
    bundle = Path(bundle)
    graphs = list(graphs)
    want = Precision(precision)
    trt = gpu.import_tensorrt("building TensorRT engines")
    env = build_environment()
    manifest = read_manifest(bundle, verify="none")
    actions = plan_engine_builds(manifest, env, want.value, graphs, lambda f: file_ok(bundle, manifest, f), rebuild)
    for action in actions:
        log.info("%s: %s (%s)", action.graph, action.action, action.reason)
    to_build = [a.graph for a in actions if a.action != REUSE]
    _verify_sources(bundle, manifest, to_build)
    _preflight(bundle, manifest, to_build, want, tensorrt_capabilities(trt), env.trt_version)

    entries: dict[str, EngineEntry] = {}
    for action in actions:
        kept = current_engine(manifest, action.graph, env, want)
        if action.action == REUSE and kept is not None:
            _update_manifest(bundle, lambda m, g=action.graph, f=kept.file: without_engines(m, g, env, keep=f))
            entries[action.graph] = kept
    for graph in tqdm(to_build, desc=f"build {want.value} engines", unit="engine", disable=not progress):
        entries[graph] = _build_one(bundle, manifest, graph, env, want, timing_cache, progress)
    return [entries[g] for g in graphs]


def _build_one(
    bundle: Path,
    manifest: Manifest,
    graph: str,
    env: BuildEnvironment,
    precision: Precision,
    timing_cache: Path | None,
    progress: bool,
) -> EngineEntry:
    """Drop this GPU's old entries for ``graph``, build its engine, record it; returns the new entry."""
    _update_manifest(bundle, lambda m: without_engines(m, graph, env))
    entry_graph = manifest.graphs[graph]
    relative = engine_file_name(graph, env, precision.value)
    report = build_engine(
        bundle / entry_graph.file,
        bundle / relative,
        shape_profiles(entry_graph, manifest.dims),
        precision,
        timing_cache_path=timing_cache,
        graph_is_annotated=graph_is_annotated(manifest, graph),
        progress=progress,
    )
    if (report.trt_version, report.device_name, report.compute_capability) != tuple(env):
        raise RuntimeError(f"{graph}: the engine was built for {report}, expected {env} (device changed during the build?)")
    entry = engine_entry(graph, relative, report, graph_dims(entry_graph, manifest.dims))
    record = file_entry(bundle, relative)
    _update_manifest(bundle, lambda m: (with_engine(m, entry, record), []))
    log.info("%s: built %s in %.1f s (%s)", graph, relative, report.build_seconds, report.layer_precisions)
    return entry
