"""Write a Triton Inference Server model repository from a bundle (``mmgen-edge triton-repo BUNDLE --out REPO``).

The repository holds two kinds of models:

* one *component* model per runtime graph (``mmgen_conditioning``, ``mmgen_denoiser_cached``,
  ``mmgen_vae_encoder``, ``mmgen_vae_decoder``): the bundle's ONNX graph on Triton's ONNX Runtime backend, or,
  where the bundle has TensorRT engines for that graph, the engines on Triton's TensorRT backend (one plain
  ``model.sm<cc>.plan`` file per compute capability, chosen by ``cc_model_filenames``). A TensorRT component
  model only loads on the GPUs of the listed compute capabilities, and only on a Triton whose TensorRT is the
  version the engines were built with (the generated README lists both); write with ``engines="none"`` for a
  repository that runs anywhere.
* three Python-backend *entry* models (``mmgen_info``, ``mmgen_perceive``, ``mmgen_generate``, the wire contract of
  :mod:`mmgen_edge.sdk.protocol`), whose ``model.py`` imports :mod:`mmgen_edge.serve.triton_bls`. ``mmgen_perceive``
  and ``mmgen_generate`` are *fronts*: ``max_batch_size`` 1 (one request per execute), ``front_instances``
  instances, each checking its request alone (a refused one fails its execute: a Triton failure, counted in
  ``nv_inference_request_failure``) and passing an accepted one on through BLS to the *batched* model
  ``mmgen_perceive_batched`` / ``mmgen_generate_batched``, where Triton's dynamic batcher merges the fronts' requests
  into engine batches; the batched models run the denoising loop and call the component models through BLS.
  Triton's Python environment therefore needs ``mmgen-edge`` installed (``pip install mmgen-edge``, the version
  that wrote the repository).

Graphs whose every tensor has the same dynamic first axis (the VAE graphs, conditioning) batch on Triton's dynamic
batcher up to the manifest's range of that axis; ``denoiser_cached`` mixes two batch symbols and a (1,) guidance
scale, so it is served unbatched (the entry models batch it). The repository is written into a temporary sibling
folder and renamed into place at the end, so a failure never leaves a half-written repository behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mmgen_edge import __version__
from mmgen_edge.runtime.backend import RUNTIME_GRAPHS
from mmgen_edge.runtime.fileio import atomic_directory
from mmgen_edge.runtime.manifest import MANIFEST_FILE, EngineEntry, GraphEntry, Manifest, TensorSpec, read_manifest

from mmgen_edge.sdk.protocol import INFO_MODEL, ModelSpec, WireTensor, model_specs

from .batcher import default_front_instances

VERSION = "1"  # the one model version written
ENGINE_MODES = ("auto", "require", "none")
MANIFEST_PARAMETER = "manifest"  # entry models' config parameter: the manifest file, relative to the version folder
BATCHED_PARAMETER = "batched_model"  # a front's config parameter: the batched model it passes accepted requests to
FRONT_MAX_BATCH_SIZE = 1  # the fronts' max_batch_size: one request per execute, so a refusal fails alone

#: Manifest dtypes and wire (protocol) Triton dtypes -> model-config data types.
CONFIG_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
WIRE_CONFIG_DTYPES = {
    "UINT8": "TYPE_UINT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP32": "TYPE_FP32",
    "BYTES": "TYPE_STRING",
}


def component_model_name(graph: str) -> str:
    """The Triton model serving one bundle graph, e.g. ``mmgen_vae_encoder``."""
    return f"mmgen_{graph}"


def batched_model_name(front: str) -> str:
    """The batched entry model behind a front, e.g. ``mmgen_perceive_batched`` (not meant for clients)."""
    return f"{front}_batched"


# ---------------------------------------------------------------------------------------------- graph -> config
def batch_symbol(graph: GraphEntry) -> str | None:
    """The dynamic symbol every tensor of ``graph`` has as first axis (Triton's batch axis), or None if none is."""
    firsts = {spec.shape[0] if spec.shape else None for spec in (*graph.inputs, *graph.outputs)}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, str):
            return first
    return None


def batch_only(spec: TensorSpec, batched: bool) -> bool:
    """A batched tensor with no axis but the batch axis: Triton needs ``dims: [1]`` and an empty ``reshape``."""
    return batched and len(spec.shape) == 1


def triton_dims(spec: TensorSpec, batched: bool) -> tuple[int, ...]:
    """The config ``dims`` of a graph tensor: without the batch axis when batched; -1 for every dynamic axis."""
    shape = spec.shape[1:] if batched else spec.shape
    if batched and not shape:
        return (1,)
    return tuple(-1 if isinstance(size, str) else size for size in shape)


def to_triton(array: np.ndarray, spec: TensorSpec, batched: bool) -> np.ndarray:
    """A graph input as Triton takes it (a batch-only tensor (B,) goes as (B, 1))."""
    return np.ascontiguousarray(array.reshape(-1, 1) if batch_only(spec, batched) else array)


def from_triton(array: np.ndarray, spec: TensorSpec, batched: bool) -> np.ndarray:
    """A graph output as Triton returns it, back in the manifest's shape."""
    return array.reshape(-1) if batch_only(spec, batched) else array


# ----------------------------------------------------------------------------------------- config.pbtxt text
@dataclass(frozen=True)
class ConfigTensor:
    """One ``input`` or ``output`` entry of a config.pbtxt."""

    name: str
    data_type: str  # "TYPE_FP32", ...
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False


def _quote(value: str) -> str:
    return json.dumps(value)  # a protobuf text-format string literal for the plain names used here


def _list(values: Sequence[int]) -> str:
    return f"[ {', '.join(map(str, values))} ]" if values else "[ ]"


def _tensor_block(tensor: ConfigTensor) -> str:
    lines = [f"    name: {_quote(tensor.name)}", f"    data_type: {tensor.data_type}", f"    dims: {_list(tensor.dims)}"]
    if tensor.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_list(tensor.reshape)} }}")
    if tensor.optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _map_blocks(field: str, entries: Mapping[str, str]) -> list[str]:
    return [f"{field} {{\n  key: {_quote(key)}\n  value: {value}\n}}" for key, value in entries.items()]


def config_text(
    name: str,
    *,
    inputs: Sequence[ConfigTensor],
    outputs: Sequence[ConfigTensor],
    max_batch_size: int,
    backend: str | None = None,
    platform: str | None = None,
    queue_delay_us: int | None = None,
    instances: int = 1,
    instance_kind: str = "KIND_AUTO",
    cc_model_filenames: Mapping[str, str] | None = None,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """A Triton model configuration in protobuf text format (``config.pbtxt``).

    ``queue_delay_us`` None means no dynamic batcher; ``parameters`` become ``string_value`` parameters.
    """
    parts = [f"name: {_quote(name)}"]
    if platform:
        parts.append(f"platform: {_quote(platform)}")
    if backend:
        parts.append(f"backend: {_quote(backend)}")
    parts.append(f"max_batch_size: {max_batch_size}")
    parts.append("input [\n" + ",\n".join(map(_tensor_block, inputs)) + "\n]")
    parts.append("output [\n" + ",\n".join(map(_tensor_block, outputs)) + "\n]")
    if queue_delay_us is not None:
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    parts.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {instance_kind}\n  }}\n]")
    parts += _map_blocks("cc_model_filenames", {k: _quote(v) for k, v in (cc_model_filenames or {}).items()})
    parts += _map_blocks("parameters", {k: f"{{ string_value: {_quote(v)} }}" for k, v in (parameters or {}).items()})
    return "\n".join(parts) + "\n"


def graph_tensors(specs: Sequence[TensorSpec], batched: bool) -> list[ConfigTensor]:
    return [
        ConfigTensor(
            spec.name,
            CONFIG_DTYPES[spec.dtype],
            triton_dims(spec, batched),
            reshape=() if batch_only(spec, batched) else None,
        )
        for spec in specs
    ]


def wire_tensors(tensors: Sequence[WireTensor]) -> list[ConfigTensor]:
    return [ConfigTensor(t.name, WIRE_CONFIG_DTYPES[t.triton_dtype], t.shape, optional=t.optional) for t in tensors]


# -------------------------------------------------------------------------------------------------- engines
def plan_file_name(compute_capability: str) -> str:
    """The plan file of one compute capability, e.g. ``model.sm90.plan`` for "9.0"."""
    return f"model.sm{compute_capability.replace('.', '')}.plan"


def select_engines(manifest: Manifest, graph: str) -> dict[str, EngineEntry]:
    """The engine to serve per compute capability for ``graph``: the manifest's precision when there is one for
    that capability, otherwise another; among equals the last recorded (the most recent build)."""
    by_cc: dict[str, list[EngineEntry]] = {}
    for engine in manifest.engines:
        if engine.graph == graph:
            by_cc.setdefault(engine.compute_capability, []).append(engine)
    chosen: dict[str, EngineEntry] = {}
    for cc, engines in sorted(by_cc.items()):
        preferred = [e for e in engines if e.precision == manifest.precision] or engines
        chosen[cc] = preferred[-1]
    return chosen


def _check_engine_ranges(manifest: Manifest, graph: str, engines: Mapping[str, EngineEntry]) -> None:
    """Triton batches up to the manifest's ranges: an engine built for smaller ranges would reject such batches."""
    for engine in engines.values():
        for symbol, built in engine.dims.items():
            want = manifest.dims.get(symbol)
            if want is not None and (built.min > want.min or built.max < want.max):
                raise ValueError(
                    f"engine {engine.file} ({graph}) was built for {symbol} = {built.min}..{built.max} but the bundle "
                    f"serves {want.min}..{want.max}: rebuild it with `mmgen-edge build`, or pass engines='none'"
                )


# ------------------------------------------------------------------------------------------------ the writer
def write_model_repository(
    bundle: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    front_instances: int | None = None,
    engines: str = "auto",
) -> Path:
    """Write a Triton model repository serving ``bundle`` to ``out`` (which must not exist, or be empty).

    Args:
        max_queue_delay_us: how long Triton's dynamic batcher waits to fill a batch.
        instances: model instances per component, batched entry model and ``mmgen_info`` (``instance_group``).
        front_instances: instances of ``mmgen_perceive`` / ``mmgen_generate`` (requests in flight per model);
            None: enough to fill the batched models' batches, within a cap (:func:`.batcher.default_front_instances`).
        engines: "auto" serves a graph's TensorRT engines where the bundle has them (ONNX Runtime otherwise),
            "require" fails unless every runtime graph has engines, "none" ignores engines.

    Returns the repository path. Raises FileExistsError for a non-empty ``out``, BundleError for a damaged bundle.
    """
    if engines not in ENGINE_MODES:
        raise ValueError(f"engines must be one of {list(ENGINE_MODES)}, got {engines!r}")
    if instances < 1 or max_queue_delay_us < 0:
        raise ValueError(f"instances must be >= 1 and max_queue_delay_us >= 0 (got {instances}, {max_queue_delay_us})")
    if front_instances is not None and front_instances < 1:
        raise ValueError(f"front_instances must be >= 1, got {front_instances}")
    bundle, out = Path(bundle), Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new path for the repository")
    manifest = read_manifest(bundle, verify="full")
    missing = [g for g in RUNTIME_GRAPHS if g not in manifest.graphs]
    if missing:
        raise ValueError(f"bundle {bundle} lacks the graphs {missing}; re-export it (Triton serves {list(RUNTIME_GRAPHS)})")
    plans = {g: ({} if engines == "none" else select_engines(manifest, g)) for g in RUNTIME_GRAPHS}
    without = [g for g, chosen in plans.items() if not chosen]
    if engines == "require" and without:
        raise ValueError(f"engines='require' but bundle {bundle} has no TensorRT engines for {without}")
    for graph, chosen in plans.items():
        _check_engine_ranges(manifest, graph, chosen)

    with atomic_directory(out, overwrite=out.exists()) as tmp:
        for graph in RUNTIME_GRAPHS:
            write_component_model(tmp, bundle, manifest, graph, plans[graph], max_queue_delay_us, instances)
        fronts = front_instances or default_front_instances(manifest.max_batch, instances)
        for spec in model_specs(manifest).values():
            if spec.name == INFO_MODEL:
                write_entry_model(tmp, bundle, spec, instances=instances)
                continue
            write_entry_model(tmp, bundle, spec, instances=fronts, batched=batched_model_name(spec.name))
            batched = replace(spec, name=batched_model_name(spec.name))
            write_entry_model(tmp, bundle, batched, instances=instances, queue_delay_us=max_queue_delay_us)
        (tmp / "README.md").write_text(repository_readme(bundle, manifest, plans))
    return out


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def write_component_model(
    repo: Path,
    bundle: Path,
    manifest: Manifest,
    graph: str,
    engines: Mapping[str, EngineEntry],
    queue_delay_us: int,
    instances: int,
) -> None:
    """``mmgen_<graph>``: the graph's engines on the TensorRT backend when given, else its ONNX on ONNX Runtime."""
    entry = manifest.graphs[graph]
    name = component_model_name(graph)
    version = repo / name / VERSION
    symbol = batch_symbol(entry)
    batched = symbol is not None
    if engines:
        for cc, engine in engines.items():
            _copy(bundle / engine.file, version / plan_file_name(cc))  # plain file: Triton reads the engine as is
        where = {"platform": "tensorrt_plan", "cc_model_filenames": {cc: plan_file_name(cc) for cc in engines}}
    else:
        _copy(bundle / entry.file, version / "model.onnx")
        if entry.external_data:  # ONNX Runtime looks for it by its recorded name, next to the model file
            _copy(bundle / entry.external_data, version / entry.external_data)
        where = {"backend": "onnxruntime"}
    text = config_text(
        name,
        inputs=graph_tensors(entry.inputs, batched),
        outputs=graph_tensors(entry.outputs, batched),
        max_batch_size=manifest.dims[symbol].max if symbol else 0,
        queue_delay_us=queue_delay_us if batched else None,
        instances=instances,
        **where,  # type: ignore[arg-type]
    )
    (repo / name / "config.pbtxt").write_text(text)


def write_entry_model(
    repo: Path,
    bundle: Path,
    spec: ModelSpec,
    *,
    instances: int,
    queue_delay_us: int | None = None,
    batched: str | None = None,
) -> None:
    """A Python-backend entry model: config, a one-line ``model.py`` importing the package, the manifest.

    Args:
        spec: the wire contract; ``spec.name`` is the model's name.
        instances: its ``instance_group`` count.
        queue_delay_us: Triton's dynamic batcher for batches up to ``spec.max_batch_size`` (None: no dynamic batcher).
        batched: a front (``max_batch_size`` 1, one request per execute) passing accepted requests to this model.
    """
    version = repo / spec.name / VERSION
    version.mkdir(parents=True)
    _copy(bundle / MANIFEST_FILE, version / MANIFEST_FILE)
    (version / "model.py").write_text(entry_model_source(spec.name))
    parameters = {MANIFEST_PARAMETER: MANIFEST_FILE}
    if batched is not None:
        parameters[BATCHED_PARAMETER] = batched
    text = config_text(
        spec.name,
        backend="python",
        inputs=wire_tensors(spec.inputs),
        outputs=wire_tensors(spec.outputs),
        max_batch_size=FRONT_MAX_BATCH_SIZE if batched else spec.max_batch_size,
        queue_delay_us=0 if batched else queue_delay_us,  # a front's requests wait in Triton's queue, one at a time
        instances=instances,
        instance_kind="KIND_CPU",  # the loop's own work is numpy; the component models hold the GPU
        parameters=parameters,
    )
    (repo / spec.name / "config.pbtxt").write_text(text)


def entry_model_source(model_name: str) -> str:
    return (
        f'"""Triton Python-backend model {model_name!r}, written by mmgen-edge {__version__} (triton-repo).\n\n'
        "The implementation is in the installed package: install mmgen-edge (this version) into Triton's Python\n"
        'environment (`pip install mmgen-edge`), or this import fails when the model loads.\n"""\n\n'
        "from mmgen_edge.serve.triton_bls import TritonPythonModel  # noqa: F401\n"
    )


def repository_readme(bundle: Path, manifest: Manifest, plans: Mapping[str, Mapping[str, EngineEntry]]) -> str:
    """Notes at the repository root (Triton loads only the model folders and ignores this file)."""
    lines = [
        "# MMGen Triton model repository",
        "",
        f"Written by mmgen-edge {__version__} from bundle `{bundle.name}` ({manifest.precision.value}). Serve it with",
        "",
        "    tritonserver --model-repository <this folder>",
        "",
        "Requirements:",
        "",
        "- The entry models (`mmgen_info`, `mmgen_perceive`, `mmgen_generate`, and `mmgen_perceive_batched`,",
        "  `mmgen_generate_batched`: the batched models behind the two fronts) use Triton's Python backend and import",
        f"  `mmgen_edge.serve.triton_bls`: install mmgen-edge {__version__} into Triton's Python environment",
        "  (`pip install mmgen-edge`, or a conda-pack environment set with the EXECUTION_ENV_PATH parameter).",
        "- Clients: `mmgen_edge.sdk.remote` (the same wire contract as `mmgen-edge serve`), or any Triton client, call",
        "  `mmgen_perceive` / `mmgen_generate`: these check each request alone, so a refused one is a Triton failure;",
        "  the `_batched` models behind them are not meant for clients.",
        "",
        "Component models (called by the entry models through BLS; not meant for clients):",
        "",
    ]
    for graph in RUNTIME_GRAPHS:
        engines = plans.get(graph) or {}
        if not engines:
            lines.append(f"- `{component_model_name(graph)}`: ONNX Runtime backend ({manifest.graphs[graph].file})")
            continue
        lines.append(f"- `{component_model_name(graph)}`: TensorRT backend, loads ONLY with these GPUs and TensorRT:")
        for cc, engine in engines.items():
            lines.append(
                f"  - compute capability {cc}: `{plan_file_name(cc)}` = {engine.file} ({engine.device_name}, "
                f"TensorRT {engine.trt_version}, {engine.precision.value})"
            )
    if any(plans.values()):
        lines += ["", "On other GPUs or Triton releases, write the repository again with engines='none' (ONNX Runtime)."]
    return "\n".join(lines) + "\n"
