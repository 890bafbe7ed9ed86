"""The proxy-model wrapper of ``serve/pytriton_errors.py`` on its own, over a stand-in for PyTriton's proxy model.

The real one runs inside tritonserver's Python stub (tests/test_serve.py serves through it); here the wrapper's
source is imported as Triton would import it, next to a ``pytriton_model`` with the names it patches, so each of
its rules is checked without Triton.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest

from mmgen_edge.serve.pytriton_errors import HANDSHAKE_TIMEOUT_S, PYTRITON_MODEL_FILE, WRAPPER, batch_refusal

#: PyTriton 0.7's proxy model, reduced to what the wrapper touches.
FAKE_PYTRITON_MODEL = '''
import triton_python_backend_utils as pb_utils

handshake_timeouts = []
refusals = []  # errors to raise before answering (the first instance bound its socket but does not listen yet)


def get_config_from_handshake_server(socket_path, timeout_s=1.0):
    handshake_timeouts.append(timeout_s)
    if refusals:
        raise refusals.pop(0)
    return {"socket": str(socket_path)}


def _wrap_response(response, requested_output_names, model_outputs):
    return pb_utils.InferenceResponse(output_tensors=[response])  # PyTriton builds the tensors


class TritonPythonModel:
    responses = []
    requested = None  # the output names each request asks for (Triton: every output when it names none)
    model_outputs = None

    def execute(self, requests):
        return [_wrap_response(r, self.requested, self.model_outputs) for r in self.responses]
'''


class Response:
    def __init__(self, data):
        self.data = data


def fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self._outputs, self._error = output_tensors, error

        def output_tensors(self):
            return self._outputs

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class TritonModelException(Exception):
        pass

    for item in (TritonError, InferenceResponse, TritonModelException):
        setattr(pb, item.__name__, item)
    return pb


@pytest.fixture()
def wrapper(tmp_path, monkeypatch):
    package = tmp_path / "fake_model_version"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / PYTRITON_MODEL_FILE).write_text(FAKE_PYTRITON_MODEL)
    (package / "model.py").write_text(WRAPPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    pb = fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    model = importlib.import_module("fake_model_version.model")
    yield model, importlib.import_module("fake_model_version.pytriton_model"), pb
    for name in [n for n in sys.modules if n.startswith("fake_model_version")]:
        del sys.modules[name]


def _error(message: str) -> np.ndarray:
    return np.array([[message.encode()]], dtype=np.object_)


def test_a_refused_request_fails_its_execute_with_its_message(wrapper):
    model, pytriton, pb = wrapper
    pytriton.TritonPythonModel.responses = [Response({"error": _error("steps must be in 1..250")})]
    with pytest.raises(pb.TritonModelException, match=r"^steps must be in 1\.\.250$"):
        model.TritonPythonModel().execute(["one request"])
    served = Response({"latents": np.zeros((1, 2)), "error": _error("")})
    pytriton.TritonPythonModel.responses = [served]
    (response,) = model.TritonPythonModel().execute(["one request"])
    assert not response.has_error() and response.output_tensors() == [served]


def test_a_request_naming_an_output_its_tasks_do_not_produce_is_refused(wrapper):
    """PyTriton answered 200 with the named output missing; now the request fails naming it. A request naming no
    output (Triton then asks for all) gets what its tasks produce."""
    model, pytriton, pb = wrapper
    outputs = {name: {"data_type": "TYPE_UINT8"} for name in ("image_depth", "image_normal", "latents", "info", "error")}
    depth_only = Response({"image_depth": np.zeros((1, 2)), "latents": np.zeros((1, 2)), "info": _error("{}"), "error": _error("")})
    pytriton.TritonPythonModel.responses, pytriton.TritonPythonModel.model_outputs = [depth_only], outputs
    pytriton.TritonPythonModel.requested = ["image_normal"]
    with pytest.raises(pb.TritonModelException, match=r"requested output\(s\) image_normal are not produced"):
        model.TritonPythonModel().execute(["one request"])
    for requested in (list(outputs), ["image_depth", "info"]):  # all (named or not), or a subset that is produced
        pytriton.TritonPythonModel.requested = requested
        (response,) = model.TritonPythonModel().execute(["one request"])
        assert not response.has_error()


def test_instances_wait_longer_for_the_first_ones_settings(wrapper):
    model, pytriton, _ = wrapper
    assert pytriton.get_config_from_handshake_server("/w/mmgen_perceive-config.sock") == {"socket": "/w/mmgen_perceive-config.sock"}
    (timeout,) = pytriton.handshake_timeouts
    assert HANDSHAKE_TIMEOUT_S - 1.0 < timeout <= HANDSHAKE_TIMEOUT_S and HANDSHAKE_TIMEOUT_S > 1.0


def test_a_refused_handshake_is_retried_and_other_errors_are_not(wrapper):
    """The first instance's socket exists a moment before it listens (seen in CI: the model failed to load)."""
    model, pytriton, _ = wrapper
    pytriton.refusals[:] = [ConnectionRefusedError(111, "Connection refused")] * 2
    assert pytriton.get_config_from_handshake_server("/w/s.sock") == {"socket": "/w/s.sock"}
    assert len(pytriton.handshake_timeouts) == 3 and not pytriton.refusals
    pytriton.refusals[:] = [ValueError("invalid JSON")]
    with pytest.raises(ValueError, match="invalid JSON"):
        pytriton.get_config_from_handshake_server("/w/s.sock")


def test_batch_refusal_needs_every_request_refused_for_one_reason():
    class R:
        def __init__(self, message=None):
            self.message_ = message

        def has_error(self):
            return self.message_ is not None

        def error(self):
            return types.SimpleNamespace(message=lambda: self.message_)

    assert batch_refusal([R("bad")]) == "bad"
    assert batch_refusal([R("bad"), R("bad")]) == "bad"
    assert batch_refusal([R("bad"), R()]) is None
    assert batch_refusal([R("bad"), R("worse")]) is None
    assert batch_refusal([]) is None
