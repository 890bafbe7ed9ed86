"""Explicit GPU memory ownership for the TensorRT runtime (cuda-python, no torch).

After Polygraphy's ``cuda/cuda.py`` and TensorRT's ``samples/python/common_runtime.py``: every allocation is an
object that owns exactly one CUDA resource and releases it in ``free()`` / ``destroy()`` (idempotent, also on
``with``-block exit). Nothing is freed behind your back: there is no ``__del__``, so an object that is dropped
without ``free()`` leaks until the process ends. :class:`~mmgen_edge.runtime.tensorrt_runner.TensorRTRunner`
owns all of its buffers and frees them in ``deactivate()``.

cuda-python calls return ``(cudaError_t, value...)``; :func:`mmgen_edge.runtime.gpu.check_cuda` unwraps them and
raises ``CudaError`` (a ``RuntimeError``) naming the error (``cudaErrorMemoryAllocation`` ...) on any failure:
errors are never swallowed. cuda-python is imported lazily by :func:`mmgen_edge.runtime.gpu.import_cudart`;
without it an ``ImportError`` names the extra to install.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .gpu import check_cuda, import_cudart

#: Zero-byte requests still get a real (1-byte) allocation, so every buffer has a valid, unique address.
MIN_ALLOCATION_BYTES = 1


def nbytes_of(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a dense array of ``shape`` and ``dtype``."""
    return int(math.prod(int(d) for d in shape)) * np.dtype(dtype).itemsize


def view_bytes(raw: Any, capacity: int, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A writable numpy array over the first bytes of ``raw`` (any writable buffer of ``capacity`` bytes).

    Raises ``ValueError`` when ``shape``/``dtype`` need more than ``capacity`` bytes.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in shape)
    needed = nbytes_of(shape, dtype)
    if needed > capacity:
        raise ValueError(f"a {shape} {dtype} view needs {needed} bytes, the buffer holds {capacity}")
    return np.frombuffer(raw, dtype=dtype, count=needed // dtype.itemsize).reshape(shape)


class DeviceBuffer:
    """``nbytes`` of device memory from ``cudaMalloc``, owned by this object until :meth:`free`.

    ``.ptr`` is the device address (an int, what ``IExecutionContext.set_tensor_address`` takes); 0 once freed.
    :meth:`ensure` grows the buffer by reallocating (never shrinks), so callers reuse it between calls and the
    address only changes when a larger tensor arrives.
    """

    def __init__(self, nbytes: int):
        self.ptr = 0
        self.nbytes = 0
        self._allocate(int(nbytes))

    def _allocate(self, nbytes: int) -> None:
        cudart = import_cudart()
        size = max(nbytes, MIN_ALLOCATION_BYTES)
        self.ptr = int(check_cuda(cudart.cudaMalloc(size), f"cudaMalloc({size} bytes)"))
        self.nbytes = nbytes

    def ensure(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; reallocates only when larger. True when the address changed."""
        if self.ptr and nbytes <= self.nbytes:
            return False
        self.free()
        self._allocate(int(nbytes))
        return True

    def free(self) -> None:
        """Release the memory (idempotent). The caller guarantees no queued GPU work still uses it."""
        if self.ptr:
            ptr, self.ptr, self.nbytes = self.ptr, 0, 0
            check_cuda(import_cudart().cudaFree(ptr), "cudaFree")

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"DeviceBuffer(nbytes={self.nbytes}, ptr={self.ptr:#x})"


class PinnedHostBuffer:
    """Page-locked host memory from ``cudaMallocHost`` with a numpy view, owned until :meth:`free`.

    ``.array`` is a ``shape``/``dtype`` numpy view of the whole buffer; :meth:`view` gives a view of its first
    bytes with another shape (the runner reuses one buffer for every batch size up to its capacity). The views
    alias the pinned memory: they are invalid after :meth:`free`, so copy whatever must outlive the buffer.
    Pinned memory makes ``cudaMemcpyAsync`` truly asynchronous and capturable in a CUDA graph.
    """

    def __init__(self, shape: Sequence[int], dtype: Any):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.nbytes = nbytes_of(self.shape, self.dtype)
        cudart = import_cudart()
        size = max(self.nbytes, MIN_ALLOCATION_BYTES)
        self.ptr = int(check_cuda(cudart.cudaMallocHost(size), f"cudaMallocHost({size} bytes)"))
        self._raw: Any = (ctypes.c_ubyte * size).from_address(self.ptr)
        self.array: np.ndarray | None = view_bytes(self._raw, self.nbytes, self.shape, self.dtype)

    def view(self, shape: Sequence[int], dtype: Any = None) -> np.ndarray:
        """A numpy view of the first bytes as ``shape`` (``dtype`` defaults to the buffer's)."""
        if not self.ptr:
            raise RuntimeError("PinnedHostBuffer was freed")
        return view_bytes(self._raw, self.nbytes, shape, self.dtype if dtype is None else dtype)

    def free(self) -> None:
        """Release the pinned memory (idempotent); views handed out before are invalid afterwards."""
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            self.array = None
            self._raw = None
            check_cuda(import_cudart().cudaFreeHost(ptr), "cudaFreeHost")

    def __enter__(self) -> "PinnedHostBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"PinnedHostBuffer(shape={self.shape}, dtype={self.dtype}, ptr={self.ptr:#x})"


class CudaStream:
    """A CUDA stream (``cudaStreamCreate``) owned until :meth:`destroy`; never the legacy default stream.

    ``int(stream)`` is the handle TensorRT's ``execute_async_v3(stream_handle)`` takes.
    """

    def __init__(self) -> None:
        self.handle: Any = check_cuda(import_cudart().cudaStreamCreate(), "cudaStreamCreate")

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        """Block until all work queued on the stream is done (raises on any asynchronous error)."""
        check_cuda(import_cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        """Destroy the stream (idempotent)."""
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check_cuda(import_cudart().cudaStreamDestroy(handle), "cudaStreamDestroy")

    def __enter__(self) -> "CudaStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _address(buffer: DeviceBuffer | PinnedHostBuffer | int) -> int:
    return int(buffer) if isinstance(buffer, int) else buffer.ptr


def memcpy_htod_async(
    dst: DeviceBuffer | int, src: PinnedHostBuffer | int, nbytes: int, stream: CudaStream
) -> None:
    """Queue a host-to-device copy of ``nbytes`` on ``stream`` (``src`` should be pinned to be asynchronous)."""
    cudart = import_cudart()
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    check_cuda(
        cudart.cudaMemcpyAsync(_address(dst), _address(src), int(nbytes), kind, stream.handle), "cudaMemcpyAsync(HtoD)"
    )


def memcpy_dtoh_async(
    dst: PinnedHostBuffer | int, src: DeviceBuffer | int, nbytes: int, stream: CudaStream
) -> None:
    """Queue a device-to-host copy of ``nbytes`` on ``stream``; the data is there after ``stream.synchronize()``."""
    cudart = import_cudart()
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check_cuda(
        cudart.cudaMemcpyAsync(_address(dst), _address(src), int(nbytes), kind, stream.handle), "cudaMemcpyAsync(DtoH)"
    )


class CudaGraph:
    """A CUDA graph captured from a stream (``cudaStreamBeginCapture`` ... ``cudaStreamEndCapture``), instantiated
    once and replayed with :meth:`launch`. Owns the graph and its executable until :meth:`destroy`.

    The captured work keeps the addresses and sizes it was recorded with: replay only while every buffer it
    touches stays allocated at the same address (the caller recaptures otherwise).
    """

    #: cudaStreamCaptureModeGlobal, as in TensorRT's CUDA-graph example (developer guide, "CUDA Graphs").
    CAPTURE_MODE = "cudaStreamCaptureModeGlobal"

    def __init__(self) -> None:
        self.graph: Any = None
        self.exec: Any = None
        self._capturing: CudaStream | None = None

    def begin_capture(self, stream: CudaStream) -> None:
        """Start recording the work queued on ``stream`` (which must not be the legacy default stream)."""
        cudart = import_cudart()
        mode = getattr(cudart.cudaStreamCaptureMode, self.CAPTURE_MODE)
        check_cuda(cudart.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        self._capturing = stream

    def end_capture(self) -> None:
        """Stop recording and instantiate the graph; raises when the capture was invalidated (nothing leaks)."""
        if self._capturing is None:
            raise RuntimeError("end_capture() without begin_capture()")
        cudart = import_cudart()
        stream, self._capturing = self._capturing, None
        self.graph = check_cuda(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            self.exec = check_cuda(cudart.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")
        except RuntimeError:
            self.destroy()
            raise

    def launch(self, stream: CudaStream) -> None:
        """Queue one replay of the graph on ``stream``."""
        if self.exec is None:
            raise RuntimeError("the CUDA graph was not captured")
        check_cuda(import_cudart().cudaGraphLaunch(self.exec, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        """Destroy the executable and the graph (idempotent)."""
        cudart = import_cudart() if (self.exec is not None or self.graph is not None) else None
        if self.exec is not None:
            graph_exec, self.exec = self.exec, None
            check_cuda(cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")  # type: ignore[union-attr]
        if self.graph is not None:
            graph, self.graph = self.graph, None
            check_cuda(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")  # type: ignore[union-attr]
