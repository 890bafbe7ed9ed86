"""Per-request errors for models bound with PyTriton: a refused request fails alone, as a Triton error.

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
built by PyTriton as before. The rest of the batch is served.

Triton's Python backend counts a request as failed only when the whole ``execute`` fails (``PbMetricReporter``:
one success flag per execute, in every release so far). So the wrapper's ``TritonPythonModel.execute`` raises when
every request of its batch was refused for the same reason (:func:`~mmgen_edge.serve.handlers.batch_refusal`):
then each one is a failure in ``nv_inference_request_failure``, with that message. A refused request batched with served ones (or with requests
refused for other reasons) keeps its own error but is counted as a success: the one case Triton cannot tell apart.
"""

from __future__ import annotations

from typing import Any

ERROR_OUTPUT = "error"
PYTRITON_MODEL_FILE = "pytriton_model.py"

#: The proxy model Triton loads for our models: PyTriton's, with per-request errors.
WRAPPER = f'''"""mmgen-edge: PyTriton's proxy model ({PYTRITON_MODEL_FILE}, unchanged) with per-request errors.

Written by mmgen_edge.serve.pytriton_errors: a response holding only a non-empty "{ERROR_OUTPUT}" output becomes a
Triton error for its request alone.
"""

import triton_python_backend_utils as pb_utils  # type: ignore

from mmgen_edge.serve.handlers import batch_refusal

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
    return _build_response(response, requested_output_names, model_outputs)


_pytriton._wrap_response = _response_or_error


# A batch whose every request was refused for one reason fails as a whole execute: Triton's Python backend
# reports a request as failed only then, so this is how a refused request reaches nv_inference_request_failure
# (alone in its batch, or batched with others refused alike). The class is compiled under a plain file name
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
