"""A stand-in for Triton serving a written model repository, for the BLS entry models' tests without Triton.

:class:`FakeTriton` checks a BLS request against the component model's config.pbtxt (name, inputs, data types,
dims, batch limit, reshape) and runs that model's ``1/model.onnx`` with ONNX Runtime on CPU; a BLS request to a
Python-backend entry model (a front passing a request on to its batched model) runs that entry model in-process,
one request per execute; :func:`fake_pb_utils` is the ``triton_python_backend_utils`` module the entry models
import, backed by it.
"""

from __future__ import annotations

import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

TYPE_TO_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_UINT8": np.uint8}  # fmt: skip


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt parsed as Triton's ModelConfig (fails on anything that is not valid Triton config syntax)."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def type_name(config_type: int) -> str:
    return model_config_pb2.DataType.Name(config_type)


def initialize_args(repo: Path, name: str) -> dict[str, str]:
    """What Triton passes to a Python model's ``initialize`` (the config as JSON, the paths are the model's folder)."""
    config = json_format.MessageToJson(parse_config(repo / name), preserving_proto_field_name=True)
    return {"model_name": name, "model_repository": str(repo / name), "model_version": "1", "model_config": config,
            "model_instance_kind": "CPU", "model_instance_name": f"{name}_0", "model_instance_device_id": "0"}  # fmt: skip


class FakeTriton:
    """Acts as Triton serving the component models of a written repository (ONNX Runtime on CPU)."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.calls: Counter[str] = Counter()
        self.batches: dict[str, list[int]] = {}
        self.python_models: dict[str, object] = {}  # entry models called through BLS, initialized on first use

    def infer(self, model_name: str, requested: list[str], inputs: list) -> dict[str, np.ndarray]:
        model_dir = self.repo / model_name
        if not (model_dir / "config.pbtxt").is_file():
            raise LookupError(f"Request for unknown model: '{model_name}' is not found")
        config = parse_config(model_dir)
        if config.backend == "python":
            return self._python(model_name, requested, inputs)
        if config.backend != "onnxruntime":
            raise LookupError(f"{model_name}: only ONNX Runtime and mmgen-edge entry models run here")
        batched = config.max_batch_size > 0
        given = {t.name(): t.as_numpy() for t in inputs}
        if sorted(given) != sorted(i.name for i in config.input):
            raise ValueError(f"{model_name}: inputs {sorted(given)}, the config has {[i.name for i in config.input]}")
        feeds = {}
        for spec in config.input:
            array = given[spec.name]
            self._check(model_name, spec, array, config.max_batch_size)
            if spec.HasField("reshape"):
                array = array.reshape(((array.shape[0],) if batched else ()) + tuple(spec.reshape.shape))
            feeds[spec.name] = array
        outputs = {o.name: o for o in config.output}
        if not set(requested) <= set(outputs):
            raise ValueError(f"{model_name}: unknown outputs requested {sorted(set(requested) - set(outputs))}")
        if model_name not in self.sessions:
            self.sessions[model_name] = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        results = dict(zip(requested, self.sessions[model_name].run(requested, feeds)))
        for name, array in results.items():
            if outputs[name].HasField("reshape"):
                results[name] = array.reshape(((array.shape[0],) if batched else ()) + tuple(outputs[name].dims))
            self._check(model_name, outputs[name], results[name], config.max_batch_size)
        self.calls[model_name] += 1
        if batched:
            self.batches.setdefault(model_name, []).append(next(iter(given.values())).shape[0])
        return results

    def _python(self, model_name: str, requested: list[str], inputs: list) -> dict[str, np.ndarray]:
        """An entry model run in-process on one request; its error (a failed execute too) comes back as ValueError."""
        from mmgen_edge.serve.triton_bls import TritonPythonModel

        pb = sys.modules["triton_python_backend_utils"]
        if model_name not in self.python_models:
            model = TritonPythonModel()
            model.initialize(initialize_args(self.repo, model_name))
            self.python_models[model_name] = model
        try:
            (response,) = self.python_models[model_name].execute([pb.InferenceRequest(inputs=inputs)])
        except pb.TritonModelException as e:
            raise ValueError(str(e)) from None
        if response.has_error():
            raise ValueError(response.error().message())
        self.calls[model_name] += 1
        return {t.name(): t.as_numpy() for t in response.output_tensors() if t.name() in requested}

    @staticmethod
    def _check(model_name: str, spec, array: np.ndarray, max_batch_size: int) -> None:
        if array.dtype != TYPE_TO_NUMPY[type_name(spec.data_type)]:
            raise ValueError(f"{model_name}.{spec.name}: {array.dtype}, the config says {type_name(spec.data_type)}")
        shape = array.shape
        if max_batch_size > 0:
            if not shape or not 1 <= shape[0] <= max_batch_size:
                raise ValueError(f"{model_name}.{spec.name}: batch {shape[:1]} outside 1..{max_batch_size}")
            shape = shape[1:]
        if len(shape) != len(spec.dims) or any(d not in (-1, s) for s, d in zip(shape, spec.dims)):
            raise ValueError(f"{model_name}.{spec.name}: shape {array.shape} does not match dims {list(spec.dims)}")


def fake_pb_utils(triton: FakeTriton) -> types.ModuleType:
    """A stand-in ``triton_python_backend_utils`` whose BLS requests run on ``triton``."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            assert isinstance(array, np.ndarray) and array.dtype.kind != "S", f"{name}: send numbers or object BYTES"
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class TritonModelException(Exception):
        pass

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self._outputs, self._error = list(output_tensors), error

        def output_tensors(self):
            return self._outputs

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class InferenceRequest:
        def __init__(self, model_name=None, requested_output_names=(), inputs=()):
            self.model_name, self.requested, self._inputs = model_name, list(requested_output_names), list(inputs)

        def inputs(self):
            return self._inputs

        def exec(self):
            try:
                outputs = triton.infer(self.model_name, self.requested, self._inputs)
            except (LookupError, ValueError) as e:
                return InferenceResponse(error=TritonError(str(e)))
            return InferenceResponse([Tensor(name, array) for name, array in outputs.items()])

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs() if t.name() == name), None)

    def get_output_tensor_by_name(response, name):
        return next((t for t in response.output_tensors() if t.name() == name), None)

    for item in (Tensor, TritonError, TritonModelException, InferenceResponse, InferenceRequest, get_input_tensor_by_name, get_output_tensor_by_name):
        setattr(pb, item.__name__, item)
    return pb
