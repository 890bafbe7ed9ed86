"""The one place that talks to the GPU stack's Python packages: lazy imports, CUDA errors, the GPU identity.

After Polygraphy's ``mod.lazy_import``: ``tensorrt`` and cuda-python are optional (the ``tensorrt`` extra), so they
are imported here on first use, never at module import, and a missing package fails with an ``ImportError`` that
names the extra to install. Engine building (``mmgen_edge.export``), engine matching
(:mod:`mmgen_edge.runtime.backend`) and the TensorRT runtime (:mod:`~mmgen_edge.runtime.tensorrt_runner`,
:mod:`~mmgen_edge.runtime.cuda_buffers`) all go through these functions.

The GPU identity an engine is valid for (device name, compute capability, TensorRT version) is read by one
function, :func:`gpu_identity`, for one device: the *current* CUDA device (``cudaGetDevice``; device 0 unless the
application selected another), the same device the TensorRT runner executes on. So an engine that the build
records is exactly the engine that matching accepts on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

#: What to install for the native TensorRT backend and engine building.
INSTALL_HINT = "pip install 'mmgen-edge[tensorrt]'"
#: cudaError_t.cudaSuccess
CUDA_SUCCESS = 0

_cudart: ModuleType | None = None


class CudaError(RuntimeError):
    """A cuda-python call returned an error; ``code`` is its ``cudaError_t`` value."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def import_tensorrt(purpose: str = "the TensorRT backend") -> ModuleType:
    """The ``tensorrt`` module.

    Args:
        purpose: what needs it, for the error message (e.g. "building TensorRT engines").

    Returns:
        The imported module.

    Raises:
        ImportError: naming the package and the extra to install when it is missing.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the 'tensorrt' package: {INSTALL_HINT}") from exc
    return tensorrt


def import_cudart(purpose: str = "the TensorRT backend") -> ModuleType:
    """cuda-python's runtime API module (``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python 12.6).

    Args:
        purpose: what needs it, for the error message.

    Returns:
        The module (imported once, then cached).

    Raises:
        ImportError: naming cuda-python and the extra to install when it is missing.
    """
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime
        except ImportError:
            try:
                from cuda import cudart as runtime  # cuda-python < 12.6 (removed in 13.x)
            except ImportError as exc:
                raise ImportError(f"{purpose} needs cuda-python (cuda.bindings.runtime): {INSTALL_HINT}") from exc
        _cudart = runtime
    return _cudart


def _error_code(err: Any) -> int:
    return int(getattr(err, "value", err))


def cuda_error_text(err: Any) -> str:
    """``"cudaErrorMemoryAllocation (2): out of memory"`` for a ``cudaError_t`` (name, code, description).

    The description is looked up only when cuda-python has already been imported (:func:`import_cudart`).
    """
    name = getattr(err, "name", None) or f"cudaError {_error_code(err)}"
    text = f"{name} ({_error_code(err)})"
    if _cudart is not None and hasattr(_cudart, "cudaGetErrorString"):
        status, description = _cudart.cudaGetErrorString(err)
        if _error_code(status) == CUDA_SUCCESS and description:
            text += f": {description.decode(errors='replace') if isinstance(description, bytes) else description}"
    return text


def check_cuda(result: Any, what: str = "CUDA call") -> Any:
    """Unwrap a cuda-python result ``(err, *values)``.

    Args:
        result: what the cuda-python call returned (a tuple, or a bare error code).
        what: the call, for the error message (e.g. "cudaMalloc(64 bytes)").

    Returns:
        The single value, a tuple of the values, or None when there are none.

    Raises:
        CudaError: ``"<what> failed: cudaError... (code): description"`` when ``err`` is not cudaSuccess.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if _error_code(err) != CUDA_SUCCESS:
        raise CudaError(f"{what} failed: {cuda_error_text(err)}", _error_code(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuIdentity:
    """The facts a TensorRT engine is valid for (the same spelling as the manifest's ``EngineEntry``)."""

    device_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    tensorrt_version: str


def current_device() -> tuple[str, str]:
    """(name, "major.minor" compute capability) of the current CUDA device.

    Returns:
        The device's name (trailing NULs and spaces stripped) and compute capability.

    Raises:
        ImportError: cuda-python is missing (naming the extra).
        CudaError: no usable CUDA device (e.g. ``cudaErrorNoDevice``, ``cudaErrorInsufficientDriver``).
    """
    cudart = import_cudart("reading the CUDA device")
    device = check_cuda(cudart.cudaGetDevice(), "cudaGetDevice")
    props = check_cuda(cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"


def tensorrt_version() -> str:
    """The installed TensorRT's version string (e.g. "10.13.0.35"); ImportError naming the extra when missing."""
    return str(import_tensorrt("reading the TensorRT version").__version__)


def gpu_identity() -> GpuIdentity:
    """This process's GPU identity: the current CUDA device and the installed TensorRT.

    Returns:
        Device name, compute capability and TensorRT version.

    Raises:
        ImportError: tensorrt or cuda-python is missing (naming the extra).
        CudaError: no usable CUDA device.
    """
    version = tensorrt_version()
    name, capability = current_device()
    return GpuIdentity(name, capability, version)
