"""The entry models of a Triton model repository (``mmgen-edge triton-repo``): Triton's Python backend, BLS.

Each entry model in the repository (``mmgen_info``, ``mmgen_perceive``, ``mmgen_generate`` and the batched models
``mmgen_perceive_batched``, ``mmgen_generate_batched``) has a one-line ``model.py`` that imports
:class:`TritonPythonModel` from here, so Triton's Python environment needs ``mmgen-edge`` installed.

Validation before batching, as in ``mmgen-edge serve``: ``mmgen_perceive`` and ``mmgen_generate`` are fronts with
``max_batch_size`` 1. A front checks its one request (:meth:`~mmgen_edge.serve.handlers.RequestHandler.check`); a
refused one fails its execute, which Triton counts in ``nv_inference_request_failure``; an accepted one goes on
through BLS to the front's batched model (its config's ``batched_model`` parameter), where Triton's dynamic batcher
merges the requests of all front instances. The batched model runs the SDK's pipeline (VAE encode, denoising loop,
decode) over :class:`BlsRunner` runners: each graph call is a BLS request to the component model serving that graph
(``mmgen_<graph>``, ONNX Runtime or TensorRT), so the heavy work runs on Triton's backends, batched by its dynamic
batcher, while the loop logic is the SDK's own. Requests are served by
:class:`mmgen_edge.serve.handlers.RequestHandler`, as in ``mmgen-edge serve``.

``triton_python_backend_utils`` exists only inside Triton's Python backend: it is imported when a model is
initialized, never at module import, so this module imports (and is tested) without Triton.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmgen_edge.runtime.backend import RUNTIME_GRAPHS, BackendChoice, BackendKind
from mmgen_edge.runtime.manifest import MANIFEST_FILE, DimRange, GraphEntry, Manifest, read_manifest
from mmgen_edge.runtime.pipeline import Pipeline
from mmgen_edge.runtime.runner import Runner
from mmgen_edge.sdk.api import MMGenModel
from mmgen_edge.sdk.protocol import GENERATE_MODEL, MODELS as ENTRY_MODELS, PERCEIVE_MODEL, model_specs

from .handlers import RequestError, RequestHandler, response_error
from .pytriton_errors import batch_refusal
from .triton_repo import (
    BATCHED_PARAMETER,
    MANIFEST_PARAMETER,
    batch_symbol,
    batched_model_name,
    component_model_name,
    from_triton,
    to_triton,
)

PB_UTILS = "triton_python_backend_utils"


def import_pb_utils() -> Any:
    """Triton's ``triton_python_backend_utils`` (only importable inside Triton's Python backend)."""
    try:
        return importlib.import_module(PB_UTILS)
    except ImportError as e:
        raise ImportError(
            f"{PB_UTILS} is missing: mmgen_edge.serve.triton_bls runs inside Triton's Python backend "
            f"(write a repository with `mmgen-edge triton-repo` and serve it with tritonserver) ({e})"
        ) from None


class BlsRunner(Runner):
    """One bundle graph served by a Triton component model, called through BLS (a blocking ``exec()``)."""

    backend = "triton-bls"

    def __init__(self, graph_name: str, graph: GraphEntry, dims: Mapping[str, DimRange], pb_utils: Any):
        super().__init__(graph_name, graph, dims)
        self.pb = pb_utils
        self.model_name = component_model_name(graph_name)
        self.batched = batch_symbol(graph) is not None  # then batch-only tensors travel as (B, 1), as configured
        self.backend = f"triton:{self.model_name}"

    def _activate(self) -> None:
        pass  # nothing to open: Triton loads the component models (BLS is not allowed during initialize anyway)

    def _deactivate(self) -> None:
        pass

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = [
            self.pb.Tensor(spec.name, to_triton(feeds[spec.name], spec, self.batched)) for spec in self.graph.inputs
        ]
        names = [spec.name for spec in self.graph.outputs]
        request = self.pb.InferenceRequest(model_name=self.model_name, requested_output_names=names, inputs=inputs)
        response = request.exec()
        if response.has_error():
            message = response.error().message()
            raise RuntimeError(f"{self.graph_name}: Triton model {self.model_name!r} failed: {message}")
        outputs: dict[str, np.ndarray] = {}
        for spec in self.graph.outputs:
            tensor = self.pb.get_output_tensor_by_name(response, spec.name)
            if tensor is None:
                raise RuntimeError(f"{self.graph_name}: Triton model {self.model_name!r} returned no {spec.name!r}")
            outputs[spec.name] = from_triton(tensor.as_numpy(), spec, self.batched)
        return outputs


def config_parameter(args: Mapping[str, str], name: str) -> str | None:
    """A ``string_value`` parameter of the model's config (as Triton passes it to ``initialize``), None if absent."""
    config = json.loads(args.get("model_config") or "{}")
    return config.get("parameters", {}).get(name, {}).get("string_value") or None


def manifest_path(args: Mapping[str, str]) -> Path:
    """The manifest an entry model reads: its config's ``manifest`` parameter, relative to the version folder."""
    relative = config_parameter(args, MANIFEST_PARAMETER) or MANIFEST_FILE
    return Path(args["model_repository"]) / str(args["model_version"]) / relative


#: Entry model name -> the wire model it serves (a batched model serves its front's).
SERVED_MODELS = {
    **{name: name for name in ENTRY_MODELS},
    **{batched_model_name(name): name for name in (PERCEIVE_MODEL, GENERATE_MODEL)},
}


def load_manifest(path: Path) -> Manifest:
    if path.name != MANIFEST_FILE:
        raise ValueError(f"the {MANIFEST_PARAMETER!r} parameter must name a {MANIFEST_FILE} file, got {path}")
    return read_manifest(path.parent, verify="none")  # only the manifest is here; the graphs are other models


def bytes_for_triton(array: np.ndarray) -> np.ndarray:
    """BYTES outputs as object arrays of bytes (numpy bytes_ arrays drop trailing zero bytes)."""
    return array.astype(np.object_) if array.dtype.kind == "S" else array


class TritonPythonModel:
    """An entry model: ``mmgen_info``, a front (``mmgen_perceive`` / ``mmgen_generate`` with a ``batched_model``
    parameter) or a batched model; which one comes from ``args["model_name"]`` and the config's parameters."""

    def initialize(self, args: Mapping[str, str]) -> None:
        self.pb = import_pb_utils()
        self.model_name = args["model_name"]
        if self.model_name not in SERVED_MODELS:
            raise ValueError(f"mmgen_edge.serve.triton_bls serves {list(SERVED_MODELS)}, not {self.model_name!r}")
        self.wire_name = SERVED_MODELS[self.model_name]  # in messages: the model the client called
        self.batched_model = config_parameter(args, BATCHED_PARAMETER)  # set: this model is a front
        manifest = load_manifest(manifest_path(args))
        runners = {g: BlsRunner(g, manifest.graphs[g], manifest.dims, self.pb) for g in RUNTIME_GRAPHS}
        for runner in runners.values():
            runner.activate()
        choice = BackendChoice(BackendKind.TRITON, "graphs served by Triton")
        self.model = MMGenModel(Pipeline.from_runners(manifest, runners, choice))
        self.handler = RequestHandler(self.model)
        self.spec = model_specs(manifest)[self.wire_name]

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; an execute whose every request was refused for one reason fails
        with that reason (``batch_refusal``): only a failed execute counts its requests in Triton's
        ``nv_inference_request_failure``. A front holds one request per execute, so each refusal fails.

        In a batched model (or ``mmgen_info``) a refused request gets a Triton error of its own while the others are
        served; a failing component model (a BLS error) fails the whole execute with a Triton error naming it."""
        if self.batched_model is not None:
            out = [self._pass_on(request) for request in requests]
        else:
            batch = [self._inputs(request) for request in requests]
            try:
                responses = self.handler.serve(self.wire_name, batch)
            except Exception as e:  # noqa: BLE001 - reported to every client of the batch instead of killing the stub
                raise self.pb.TritonModelException(f"{self.wire_name}: {type(e).__name__}: {e}") from None
            out = [self._response(response) for response in responses]
        reason = batch_refusal(out)
        if reason is not None:
            raise self.pb.TritonModelException(reason)
        return out

    def _pass_on(self, request: Any) -> Any:
        """A front's request: checked alone, then run by the batched model (a BLS request with its input tensors)."""
        try:
            self.handler.check(self.wire_name, self._inputs(request))
        except RequestError as e:
            return self._error(str(e))
        outputs = [tensor.name for tensor in self.spec.outputs]
        bls = self.pb.InferenceRequest(model_name=self.batched_model, requested_output_names=outputs, inputs=request.inputs())
        response = bls.exec()
        if response.has_error():
            return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(response.error().message()))
        return self.pb.InferenceResponse(output_tensors=response.output_tensors())

    def _error(self, message: str) -> Any:
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(f"{self.wire_name}: {message}"))

    def _response(self, response: Mapping[str, np.ndarray]) -> Any:
        message = response_error(response)
        if message is not None:
            return self._error(message)
        return self.pb.InferenceResponse(output_tensors=self._tensors(response))

    def _tensors(self, response: Mapping[str, np.ndarray]) -> list[Any]:
        return [self.pb.Tensor(name, bytes_for_triton(array)) for name, array in response.items()]

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        """The request's tensors by name (absent optional inputs are left out; BYTES arrive as object arrays)."""
        out: dict[str, np.ndarray] = {}
        for wire in self.spec.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, wire.name)
            if tensor is not None:
                out[wire.name] = tensor.as_numpy()
        return out

    def finalize(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.close()
