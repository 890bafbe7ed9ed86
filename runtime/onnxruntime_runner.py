"""ONNX Runtime runner: CPU, CUDA and TensorRT execution providers, never a silent fallback.

ONNX Runtime quietly runs on CPU when a requested GPU provider cannot load; this runner passes providers
explicitly and checks ``get_providers()`` after creating the session, raising if the first requested provider is
not the one in charge. Activation also compares the session's own input/output metadata (names, dtypes, fixed
dimensions) with the manifest, so an edited manifest fails there, naming the graph, tensor and both shapes. On GPU providers, inputs and outputs go through ``IOBinding`` (outputs are allocated by ORT
on the device and copied back once per call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import DimRange, GraphEntry, TensorSpec
from .runner import EDITED_MANIFEST_HINT, INPUT, OUTPUT, Runner, check_live_io
from .thread_choice import ThreadChoice, available_cpus, choose_threads

CPU = "CPUExecutionProvider"
#: ONNX Runtime's session option for busy-waiting intra-op threads (off for the CPU provider, see ``_activate``).
SPINNING_KEY = "session.intra_op.allow_spinning"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: ONNX Runtime's tensor element types -> numpy dtype names (those our graphs can carry at their I/O).
ORT_TO_NUMPY = {"float": "float32", "float16": "float16", "double": "float64", "int64": "int64", "int32": "int32",
                "int8": "int8", "uint8": "uint8", "bool": "bool"}  # fmt: skip
GPU_EXTRA_HINT = "install the gpu extra: pip install 'mmgen-edge[gpu]' (onnxruntime-gpu), with a matching CUDA"
#: Thread choices made in this process (:mod:`.thread_choice`), by graph file, its size and time, shapes and CPUs.
_THREAD_CHOICES: dict[tuple[object, ...], ThreadChoice] = {}


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a base dependency
        raise ImportError(f"onnxruntime is required for this backend: pip install onnxruntime ({e})") from None
    return onnxruntime


def ort_type_to_numpy(type_name: str) -> str:
    """numpy dtype name of an ONNX Runtime tensor type string ("tensor(float)" -> "float32")."""
    inner = type_name.removeprefix("tensor(").removesuffix(")")
    if inner not in ORT_TO_NUMPY:
        raise TypeError(f"ONNX Runtime type {type_name!r} cannot be a runner input or output")
    return ORT_TO_NUMPY[inner]


def session_io(session: Any) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int | str | None, ...]]]:
    """({name: (mode, numpy dtype name)}, {name: shape}) of a live ``InferenceSession``, from its own metadata.

    Dynamic dimensions come back as ORT reports them (a symbol name or None).
    """
    io: dict[str, tuple[str, str]] = {}
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    for mode, args in ((INPUT, session.get_inputs()), (OUTPUT, session.get_outputs())):
        for arg in args:
            io[arg.name] = (mode, ort_type_to_numpy(arg.type))
            shapes[arg.name] = tuple(arg.shape)
    return io, shapes


def profile_feeds(inputs: Sequence[TensorSpec], dims: Mapping[str, DimRange]) -> dict[str, np.ndarray]:
    """Inputs at the optimisation-profile shapes (each dynamic dimension at its ``opt``, 1 without a range): floats
    0.5, integers 0.

    For timing only (a class label 0 and a timestep 0.5 are valid inputs of every bundle graph).
    """
    feeds = {}
    for spec in inputs:
        shape = tuple((dims[d].opt if d in dims else 1) if isinstance(d, str) else d for d in spec.shape)
        fill = 0.5 if spec.dtype.startswith("float") else 0
        feeds[spec.name] = np.full(shape, fill, dtype=spec.dtype)
    return feeds


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


class OnnxRuntimeRunner(Runner):
    """Run one bundle graph with ONNX Runtime.

    Args:
        providers: provider names, or (name, options) pairs, in priority order; the first is required.
        threads: intra-op threads for the CPU provider; None: ONNX Runtime's default, or one thread where that is
            measured faster (:mod:`.thread_choice`; ``thread_choice`` says which and why).
    """

    def __init__(
        self,
        bundle: str | Path,
        graph_name: str,
        graph: GraphEntry,
        dims: Mapping[str, DimRange],
        providers: Sequence[str | tuple[str, dict[str, Any]]] = (CPU,),
        threads: int | None = None,
    ):
        super().__init__(graph_name, graph, dims)
        self.path = Path(bundle) / graph.file
        self.providers = list(providers)
        self.threads = threads
        self.session: Any = None
        self.thread_choice: ThreadChoice | None = None
        primary = self.providers[0]
        self.primary = primary if isinstance(primary, str) else primary[0]
        self.backend = f"onnxruntime:{self.primary}"

    def _activate(self) -> None:
        ort = import_onnxruntime()
        if self.primary not in ort.get_available_providers():
            raise RuntimeError(
                f"{self.primary} is not available in this onnxruntime build "
                f"(available: {ort.get_available_providers()}); {GPU_EXTRA_HINT}"
            )
        choose = self.primary == CPU and self.threads is None
        key = self._thread_key() if choose else None
        known = _THREAD_CHOICES.get(key) if choose else None
        self.thread_choice = known
        self.session = self._session(ort, self.threads if known is None else known.threads)
        active = self.session.get_providers()
        if not active or active[0] != self.primary:
            self.session = None
            raise RuntimeError(
                f"onnxruntime did not start {self.primary} for {self.graph_name} (it runs on {active}); "
                "refusing a silent fallback"
            )
        try:
            io, shapes = session_io(self.session)
            check_live_io(self.graph_name, self.graph, str(self.path), io, shapes, "graph", EDITED_MANIFEST_HINT)
            if choose and known is None:
                self._choose_threads(ort, key)
        except BaseException:
            self.session = None
            raise

    def _session(self, ort: Any, threads: int | None) -> Any:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if self.primary == CPU:
            # A pipeline runs four sessions in turn on the same cores. Each session's intra-op threads spin after
            # its call (ORT's default), starving the next session: measured on 2 cores, a demo K = 1 frame took
            # 168 ms spinning, 119 ms not (the distilled decoder's: 119 -> 68 ms).
            options.add_session_config_entry(SPINNING_KEY, "0")
        return ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)

    def _thread_key(self) -> tuple[object, ...]:
        """What a thread choice depends on: the graph file (path, size, time), the profile shapes and the CPUs."""
        stat = self.path.stat()
        shapes = tuple((spec.name, spec.shape) for spec in self.graph.inputs)
        return (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, available_cpus(), shapes,
                tuple(sorted((name, r.opt) for name, r in self.dims.items())))  # fmt: skip

    def _choose_threads(self, ort: Any, key: tuple[object, ...]) -> None:
        """Time the default-threads session against a one-thread one and keep the faster (remembered by ``key``)."""
        feeds = profile_feeds(self.graph.inputs, self.dims)
        one_thread: list[Any] = []

        def make_one_thread() -> Any:
            one_thread.append(self._session(ort, 1))
            return lambda: one_thread[0].run(None, feeds)

        try:
            choice = choose_threads(lambda: self.session.run(None, feeds), make_one_thread, available_cpus())
        except Exception as e:  # noqa: BLE001 - timing is an optimisation: a graph that refuses the profile
            # feeds (whatever its reason) runs on the default threads, and its real calls report their errors
            choice = ThreadChoice(None, f"not timed: the profile-shape call failed ({type(e).__name__})")
        _THREAD_CHOICES[key] = choice
        if choice.threads == 1:
            self.session = one_thread[0]
        self.thread_choice = choice

    def metadata(self) -> Mapping[str, str] | None:
        return None if self.session is None else dict(self.session.get_modelmeta().custom_metadata_map)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [spec.name for spec in self.graph.outputs]
        if self.primary == CPU:
            return dict(zip(names, self.session.run(names, dict(feeds))))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def _deactivate(self) -> None:
        self.session = None
