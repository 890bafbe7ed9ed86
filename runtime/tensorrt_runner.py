"""Native TensorRT runner (TensorRT >= 10 name-based I/O API, cuda-python buffers; no torch).

``activate`` deserializes the plain engine file, checks its I/O tensors against the graph's manifest entry (names,
directions, dtypes, ranks and static dimensions: a stale or foreign engine fails here with every difference
listed), and creates an execution context and a CUDA stream. ``infer`` sets the input shapes, copies the inputs
through pinned host buffers, runs ``execute_async_v3`` and copies the outputs back.

Memory ownership: one device buffer and one pinned host buffer per I/O tensor, owned by the runner, reused between
calls and grown (reallocated) only when a call needs more bytes than before; all are freed in ``deactivate``.
Outputs are returned as fresh numpy arrays (copies), so they stay valid after later calls and after
``deactivate``.

CUDA graphs (``use_cuda_graph=True``): the host-to-device copies, ``execute_async_v3`` and the device-to-host
copies are captured into one CUDA graph and replayed while the input shapes (and so the buffer addresses) stay the
same as in the previous call; a call with other shapes runs normally and recaptures. TensorRT requires
``execute_async_v3`` to run once after an input-shape change before capturing (it updates internal state then;
TensorRT developer guide, "CUDA Graphs"), which the normal run of that call does. If TensorRT cannot be captured
(e.g. engines with loops or conditionals: ``cudaStreamEndCapture`` fails), the runner logs a warning and stays on
the normal path; the execution context remains usable.

All decisions that need no GPU are pure functions here (:func:`trt_dtype_to_numpy`, :func:`engine_io_mismatch`,
:func:`plan_buffers`, :func:`graph_key`) and are tested on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .cuda_buffers import (
    CudaGraph,
    CudaStream,
    DeviceBuffer,
    PinnedHostBuffer,
    memcpy_dtoh_async,
    memcpy_htod_async,
    nbytes_of,
)
from .gpu import import_cudart, import_tensorrt
from .manifest import DimRange, GraphEntry
from .runner import INPUT, OUTPUT, Runner, check_live_io, io_mismatch

log = logging.getLogger(__name__)

#: TensorRT ``DataType`` member names -> numpy dtype names (the types our graphs can carry at their I/O).
TRT_TO_NUMPY: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}
#: TensorRT types with no numpy equivalent (they can only be internal, or need byte buffers we do not offer).
TRT_WITHOUT_NUMPY = frozenset({"BF16", "FP8", "INT4", "FP4", "E8M0"})
#: The single optimisation profile our engines are built with (export/engines.py).
PROFILE_INDEX = 0
STALE_ENGINE_HINT = "stale or foreign engine: rebuild it with `mmgen-edge build` (export.engines.build_bundle_engines)"

Shape = tuple[int, ...]


# ------------------------------------------------------------------------------------------- pure decisions


def trt_dtype_to_numpy(dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT ``DataType`` (the member, its ``.name`` or ``str()``: "HALF", "DataType.HALF")."""
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()
    if name in TRT_TO_NUMPY:
        return np.dtype(TRT_TO_NUMPY[name])
    if name in TRT_WITHOUT_NUMPY:
        raise TypeError(f"TensorRT type {name} has no numpy equivalent: it cannot be a runner input or output")
    raise TypeError(f"unknown TensorRT data type {dtype!r}")


def engine_io_mismatch(
    engine_io: Mapping[str, tuple[str, str]],
    graph: GraphEntry,
    engine_shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """Every difference between an engine's I/O tensors and the graph's manifest entry; [] when they match.

    ``engine_io``: {name: (mode "input"/"output", numpy dtype name)}. ``engine_shapes`` (optional): {name: engine
    shape with -1 for dynamic dimensions}; checks ranks, static sizes, and dimensions the engine fixed where the
    manifest has a dynamic one (the comparison every runner makes: :func:`runner.io_mismatch`).
    """
    return io_mismatch(graph, engine_io, engine_shapes, source="engine")


def plan_buffers(
    shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, Any], current_sizes: Mapping[str, int]
) -> dict[str, int]:
    """Buffers that must be (re)allocated for these shapes: {name: bytes needed}.

    A buffer is reused when it exists with at least the bytes needed (buffers only grow, so a call with a smaller
    batch keeps the larger allocation and its address).
    """
    needed = {name: nbytes_of(shape, dtypes[name]) for name, shape in shapes.items()}
    return {name: size for name, size in needed.items() if name not in current_sizes or current_sizes[name] < size}


def graph_key(input_shapes: Mapping[str, Sequence[int]], addresses: Mapping[str, int]) -> tuple[Any, ...]:
    """What a captured CUDA graph depends on: input shapes (output shapes follow) and every buffer address."""
    return (
        tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in input_shapes.items())),
        tuple(sorted(addresses.items())),
    )


# ------------------------------------------------------------------------------------------ TensorRT glue

_logger: Any = None


def _trt_logger(trt: ModuleType) -> Any:
    """One process-wide ``trt.Logger`` (TensorRT keeps the first logger it is given)."""
    global _logger
    if _logger is None:
        _logger = trt.Logger(trt.Logger.WARNING)
    return _logger


def read_engine_io(trt: ModuleType, engine: Any) -> tuple[dict[str, tuple[str, str]], dict[str, Shape]]:
    """({name: (mode, numpy dtype name)}, {name: shape with -1 for dynamic dims}) of an ``ICudaEngine``."""
    io: dict[str, tuple[str, str]] = {}
    shapes: dict[str, Shape] = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = INPUT if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else OUTPUT
        io[name] = (mode, trt_dtype_to_numpy(engine.get_tensor_dtype(name)).name)
        shapes[name] = tuple(int(d) for d in engine.get_tensor_shape(name))
        if hasattr(engine, "is_shape_inference_io") and engine.is_shape_inference_io(name):
            raise ValueError(f"{name!r} is a shape tensor (host memory): the runner only supports device tensors")
    return io, shapes


class TensorRTRunner(Runner):
    """Run one bundle graph from its TensorRT engine file.

    Args:
        engine_path: the plain serialized engine (as written by ``export.engines.build_bundle_engines``).
        use_cuda_graph: replay a captured CUDA graph while input shapes repeat (see the module docstring).

    Construction fails with an ImportError naming ``mmgen-edge[tensorrt]`` when tensorrt or cuda-python is
    missing. The CUDA device is the current one (device 0 unless the application selected another).
    """

    backend = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        graph_name: str,
        graph: GraphEntry,
        dims: Mapping[str, DimRange],
        use_cuda_graph: bool = False,
    ):
        super().__init__(graph_name, graph, dims)
        self.engine_path = Path(engine_path)
        self.use_cuda_graph = use_cuda_graph
        self._trt = import_tensorrt()
        import_cudart()  # fail now, not at activate(), when cuda-python is missing
        self._reset_state()

    def _reset_state(self) -> None:
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: CudaStream | None = None
        self._dtypes: dict[str, np.dtype] = {}
        self._inputs: tuple[str, ...] = ()
        self._outputs: tuple[str, ...] = ()
        self._device: dict[str, DeviceBuffer] = {}
        self._host: dict[str, PinnedHostBuffer] = {}
        self._input_shapes: dict[str, Shape] = {}
        self._graph: CudaGraph | None = None
        self._graph_key: tuple[Any, ...] | None = None
        self._graph_failed = False

    @property
    def cuda_graph_active(self) -> bool:
        """True while a captured CUDA graph is ready for replay."""
        return self._graph is not None

    # ------------------------------------------------------------------------------------ activate/deactivate

    def _activate(self) -> None:
        if not self.engine_path.is_file():
            raise FileNotFoundError(f"{self.graph_name}: engine file {self.engine_path} is missing")
        trt = self._trt
        try:
            self._runtime = trt.Runtime(_trt_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self._engine is None:
                raise RuntimeError(
                    f"{self.graph_name}: TensorRT {trt.__version__} could not deserialize {self.engine_path} "
                    f"(see the TensorRT errors above; {STALE_ENGINE_HINT})"
                )
            io, shapes = read_engine_io(trt, self._engine)
            check_live_io(self.graph_name, self.graph, str(self.engine_path), io, shapes, "engine", STALE_ENGINE_HINT)
            self._dtypes = {name: np.dtype(dtype) for name, (_, dtype) in io.items()}
            self._inputs = tuple(spec.name for spec in self.graph.inputs)
            self._outputs = tuple(spec.name for spec in self.graph.outputs)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RuntimeError(f"{self.graph_name}: TensorRT could not create an execution context (GPU memory?)")
            self._stream = CudaStream()
        except BaseException:
            self._release()
            raise

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        """Free everything this runner owns (stream work is finished first); raises the first CUDA error after
        releasing the rest."""
        errors: list[BaseException] = []

        def attempt(action: Any) -> None:
            try:
                action()
            except RuntimeError as exc:  # keep releasing; the first error is raised below
                errors.append(exc)

        if self._stream is not None:
            attempt(self._stream.synchronize)
        if self._graph is not None:
            attempt(self._graph.destroy)
        self._context = None  # TensorRT objects go before the memory they point to
        self._engine = None
        self._runtime = None
        for buffer in [*self._device.values(), *self._host.values()]:
            attempt(buffer.free)
        if self._stream is not None:
            attempt(self._stream.destroy)
        self._reset_state()
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------------------------------------- infer

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = self._set_shapes(feeds)
        self._ensure_buffers(shapes)
        for name in self._inputs:
            np.copyto(self._host[name].view(shapes[name]), feeds[name], casting="no")
        for name in (*self._inputs, *self._outputs):
            self._context.set_tensor_address(name, self._device[name].ptr)
        if self.use_cuda_graph and not self._graph_failed:
            self._run_with_graph(shapes)
        else:
            self._run_eager(shapes)
        return {name: self._host[name].view(shapes[name]).copy() for name in self._outputs}

    def _set_shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Shape]:
        """Set changed input shapes on the context; return every I/O tensor's shape for this call."""
        shapes: dict[str, Shape] = {}
        for name in self._inputs:
            shape = tuple(int(d) for d in feeds[name].shape)
            shapes[name] = shape
            if self._input_shapes.get(name) == shape:
                continue
            if not self._context.set_input_shape(name, shape):
                low, _, high = self._engine.get_tensor_profile_shape(name, PROFILE_INDEX)
                raise ValueError(
                    f"{self.graph_name}.{name}: shape {shape} is outside the engine's profile {tuple(low)}..{tuple(high)}"
                )
            self._input_shapes[name] = shape
        for name in self._outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.graph_name}.{name}: output shape {shape} is not determined by the input shapes")
            shapes[name] = shape
        return shapes

    def _ensure_buffers(self, shapes: Mapping[str, Shape]) -> None:
        """Grow the device and pinned host buffers that are too small for this call."""
        current = {name: buffer.nbytes for name, buffer in self._device.items()}
        for name, nbytes in plan_buffers(shapes, self._dtypes, current).items():
            dtype = self._dtypes[name]
            if name in self._device:
                self._device[name].ensure(nbytes)
            else:
                self._device[name] = DeviceBuffer(nbytes)
            old = self._host.pop(name, None)
            if old is not None:
                old.free()
            self._host[name] = PinnedHostBuffer((nbytes // dtype.itemsize,), dtype)

    def _enqueue(self, shapes: Mapping[str, Shape]) -> None:
        """Queue copies in, the engine, and copies out on the stream (no synchronisation: capturable)."""
        assert self._stream is not None
        for name in self._inputs:
            nbytes = nbytes_of(shapes[name], self._dtypes[name])
            memcpy_htod_async(self._device[name], self._host[name], nbytes, self._stream)
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"{self.graph_name}: TensorRT execute_async_v3 failed (see the TensorRT errors above)")
        for name in self._outputs:
            nbytes = nbytes_of(shapes[name], self._dtypes[name])
            memcpy_dtoh_async(self._host[name], self._device[name], nbytes, self._stream)

    def _run_eager(self, shapes: Mapping[str, Shape]) -> None:
        assert self._stream is not None
        self._enqueue(shapes)
        self._stream.synchronize()

    def _run_with_graph(self, shapes: Mapping[str, Shape]) -> None:
        """Replay the captured graph when shapes and addresses repeat; else run normally, then recapture."""
        assert self._stream is not None
        addresses = {name: buffer.ptr for name, buffer in self._device.items()}
        addresses.update({f"host:{name}": buffer.ptr for name, buffer in self._host.items()})
        key = graph_key({name: shapes[name] for name in self._inputs}, addresses)
        if self._graph is not None and key == self._graph_key:
            self._graph.launch(self._stream)
            self._stream.synchronize()
            return
        self._drop_graph()
        self._run_eager(shapes)  # TensorRT: execute once after a shape change before capturing
        self._capture(shapes, key)

    def _capture(self, shapes: Mapping[str, Shape], key: tuple[Any, ...]) -> None:
        assert self._stream is not None
        graph = CudaGraph()
        graph.begin_capture(self._stream)
        try:
            self._enqueue(shapes)
        except RuntimeError as exc:
            self._abandon_capture(graph, exc)
            return
        try:
            graph.end_capture()
        except RuntimeError as exc:
            self._give_up_graphs(exc)
            return
        self._graph, self._graph_key = graph, key

    def _abandon_capture(self, graph: CudaGraph, cause: RuntimeError) -> None:
        """A call failed while capturing: end the capture (it is invalid), then stop using CUDA graphs."""
        try:
            graph.end_capture()
        except RuntimeError as end_error:  # expected: ``cause`` invalidated the capture; ``cause`` is reported
            log.debug("%s: ending the invalidated capture: %s", self.graph_name, end_error)
        graph.destroy()
        self._give_up_graphs(cause)

    def _give_up_graphs(self, cause: RuntimeError) -> None:
        self._graph_failed = True
        log.warning("%s: CUDA graph capture failed, running without CUDA graphs: %s", self.graph_name, cause)

    def _drop_graph(self) -> None:
        if self._graph is not None:
            graph, self._graph, self._graph_key = self._graph, None, None
            graph.destroy()
