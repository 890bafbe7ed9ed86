"""Per-request errors for models bound with PyTriton: a refused request fails as a Triton error of its own.

PyTriton (0.7, ``pytriton/proxy/model.py``) deploys one Python-backend model per bound callable, which turns the
callable's result into either one ``InferenceResponse`` per request or one exception for the whole batch: it has
no per-request error. So a request the server refuses could only come back as a *successful* response carrying an
``error`` output (invisible to Triton's ``nv_inference_request_failure`` and to perf_analyzer), or fail its whole
batch.

PyTriton sends that proxy model's files to Triton when it loads the model (``Model.get_proxy_model_files``). For
our models the files are PyTriton's own, unchanged, plus one: PyTriton's ``model.py`` goes in as
``pytriton_model.py`` and a small ``model.py`` (:data:`WRAPPER`) imports it and wraps its response builder. A
response that carries only a non-empty ``error`` output (what :func:`~mmgen_edge.serve.handlers.error_response`
returns) becomes ``InferenceResponse(error=TritonError(message))`` for that request; every other response is
built by PyTriton as before.

Triton's Python backend counts a request as failed only when the whole ``execute`` fails (``PbMetricReporter``:
one success flag per execute, in every release so far). So the wrapper's ``TritonPythonModel.execute`` raises when
every request of its execute was refused for the same reason (:func:`batch_refusal`): then each one is a failure in
``nv_inference_request_failure``, with that message. ``serve`` binds its client-facing models with
``max_batch_size`` 1 (:mod:`.server`), so an execute holds one request and every refusal is such a failure; the
requests it accepts are batched afterwards, in the server (:mod:`.batcher`).

Each instance of a bound model is a Python stub process that imports this wrapper, so the wrapper imports nothing
of mmgen-edge but this module (no numpy, no SDK): a stub stays near PyTriton's own size (README, journey 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR_OUTPUT = "error"
PYTRITON_MODEL_FILE = "pytriton_model.py"
#: How long an instance after a model's first waits for the first one's settings (PyTriton 0.7 waits 1 s, which is
#: too little when several front instances start at once on a busy machine: the model then fails to load).
HANDSHAKE_TIMEOUT_S = 60.0

#: The proxy model Triton loads for our models: PyTriton's, with per-request errors.
WRAPPER = f'''"""mmgen-edge: PyTriton's proxy model ({PYTRITON_MODEL_FILE}, unchanged) with per-request errors.

Written by mmgen_edge.serve.pytriton_errors: a response holding only a non-empty "{ERROR_OUTPUT}" output becomes a
Triton error for its request alone, an execute whose requests were all refused alike fails, and instances wait
{HANDSHAKE_TIMEOUT_S:.0f} s (not 1 s) for the first instance's settings.
"""

import triton_python_backend_utils as pb_utils  # type: ignore

from mmgen_edge.serve.pytriton_errors import batch_refusal, missing_outputs_error

from . import pytriton_model as _pytriton

if not callable(getattr(_pytriton, "_wrap_response", None)):
    raise ImportError("mmgen-edge: this PyTriton's proxy model has no _wrap_response; install nvidia-pytriton 0.7")

_build_response = _pytriton._wrap_response


def _response_or_error(response, requested_output_names, model_outputs):
    data = response.data
    if data is not None and set(data) == {{"{ERROR_OUTPUT}"}}:
        value = data["{ERROR_OUTPUT}"].reshape(-1)[0]
        message = bytes(value).decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if message:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
    if data is not None:
        message = missing_outputs_error(data, requested_output_names, model_outputs)
        if message:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
    return _build_response(response, requested_output_names, model_outputs)


_pytriton._wrap_response = _response_or_error

# Every instance but a model's first reads PyTriton's settings from the first over a socket, within 1 s in PyTriton
# 0.7: several instances starting at once on a busy machine miss that and the model fails to load. And the first
# instance binds that socket (the file appears) a moment before it listens: a connection in between is refused,
# which PyTriton does not retry. So: retry a refused connection, within one deadline for the whole wait.
if not callable(getattr(_pytriton, "get_config_from_handshake_server", None)):
    raise ImportError("mmgen-edge: this PyTriton's proxy model has no get_config_from_handshake_server; install nvidia-pytriton 0.7")
_get_config = _pytriton.get_config_from_handshake_server


def _config_from_first_instance(socket_path):
    import time

    deadline = time.monotonic() + {HANDSHAKE_TIMEOUT_S}
    while True:
        try:
            return _get_config(socket_path, timeout_s=max(0.5, deadline - time.monotonic()))
        except ConnectionRefusedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


_pytriton.get_config_from_handshake_server = _config_from_first_instance


# An execute whose every request was refused for one reason fails as a whole: Triton's Python backend reports a
# request as failed only then, so this is how a refused request (alone in its execute: max_batch_size 1) reaches
# nv_inference_request_failure. The class is compiled under a plain file name
# because the stub appends the raising frames ("At: <file>(<line>): <function>") to the message clients see,
# and this file lies in a temporary folder of the server's.
_FAILING_MODEL = """
class TritonPythonModel(_pytriton.TritonPythonModel):
    def execute(self, requests):
        responses = super().execute(requests)
        reason = batch_refusal(responses)
        if reason is not None:
            raise pb_utils.TritonModelException(reason)
        return responses
"""
exec(compile(_FAILING_MODEL, "mmgen-edge", "exec"), globals())
'''


def missing_outputs_error(data: Any, requested: Any, model_outputs: Any) -> str | None:
    """Why a request that named its outputs gets fewer than it named (PyTriton drops the missing ones silently and
    answers 200), or None. Triton asks for every output when a request names none, and such a request gets what its
    tasks produce; so only a request naming a strict subset of the model's outputs is checked."""
    named = set(requested or ())
    if not named or not model_outputs or named >= set(model_outputs):
        return None
    missing = sorted(named - set(data))
    if not missing:
        return None
    return (
        f"requested output(s) {', '.join(missing)} are not produced by this request: ask for their tasks "
        "(perceive: tasks; generate: every modality is produced)"
    )


def batch_refusal(responses: Sequence[Any]) -> str | None:
    """The one reason for which every request of an execute was refused, else None.

    ``responses`` are Triton Python-backend responses (``has_error()``, ``error().message()``). Triton's Python
    backend counts a request as failed only when its whole ``execute`` fails, so an execute whose every request was
    refused alike raises this reason instead of returning the error responses: then each request is a failure in
    ``nv_inference_request_failure``, with that message. With one request per execute that is every refusal.
    """
    if not responses or not all(r.has_error() for r in responses):
        return None
    messages = {r.error().message() for r in responses}
    return messages.pop() if len(messages) == 1 else None


def install_per_request_errors(triton: Any, model_name: str) -> None:
    """Deploy ``model_name`` (bound, not yet loaded) with the :data:`WRAPPER` proxy model.

    Args:
        triton: a ``pytriton.triton.Triton`` on which ``model_name`` was bound and ``run()`` not called yet.
        model_name: the bound model.

    Raises:
        RuntimeError: this PyTriton does not deploy models the way this module expects (it names the version).
    """
    manager = getattr(triton, "_model_manager", None)
    models = [m for m in getattr(manager, "models", ()) if getattr(m, "model_name", None) == model_name]
    policy = getattr(triton, "_triton_lifecycle_policy", None)
    if len(models) != 1 or not callable(getattr(models[0], "get_proxy_model_files", None)) or getattr(policy, "local_model_store", True):
        raise RuntimeError(
            f"cannot give {model_name} per-request errors on nvidia-pytriton {_pytriton_version()}: its model "
            "deployment differs from 0.7's (install nvidia-pytriton 0.7)"
        )
    model = models[0]
    pytriton_files = model.get_proxy_model_files

    def files() -> dict[str, bytes]:
        out = dict(pytriton_files())
        key = f"file:{model.model_version}/model.py"
        if key not in out:
            raise RuntimeError(f"nvidia-pytriton {_pytriton_version()} sends no {key!r} for {model_name}")
        out[f"file:{model.model_version}/{PYTRITON_MODEL_FILE}"] = out[key]
        out[key] = WRAPPER.encode()
        return out

    model.get_proxy_model_files = files


def _pytriton_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-pytriton")
    except PackageNotFoundError:
        return "(unknown version)"
