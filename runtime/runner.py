"""The runner interface every backend implements (after Polygraphy's runners): ``activate / infer / deactivate``.

A runner executes one graph of a bundle. At activation each backend compares its live I/O metadata with the
manifest (:func:`check_live_io`: names, directions, dtypes, fixed dims), so an edited manifest or a foreign graph
fails there, naming the graph, tensor and both shapes. :class:`Runner` checks every call's inputs against the
graph's manifest entry (names, dtypes, shapes, dynamic-dimension ranges) before the backend sees them, so a bad
feed fails with a message that names the tensor instead of a backend error deep inside.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .manifest import BundleError, DimRange, GraphEntry, Manifest, metadata_problems

INPUT, OUTPUT = "input", "output"
#: A live graph dimension: an int when fixed; -1, None or a symbol name when dynamic.
LiveDim = int | str | None


def io_mismatch(
    graph: GraphEntry,
    live_io: Mapping[str, tuple[str, str]],
    live_shapes: Mapping[str, Sequence[LiveDim]] | None = None,
    source: str = "engine",
) -> list[str]:
    """Every difference between a backend's live I/O tensors and the graph's manifest entry; [] when they match.

    Args:
        graph: the manifest's entry for the graph.
        live_io: {name: (mode "input"/"output", numpy dtype name)} as the backend reports them.
        live_shapes: {name: shape} as the backend reports them (dynamic dims as -1, None or a symbol); checks
            ranks, static sizes, and dimensions the backend fixed where the manifest has a dynamic one.
        source: what the live side is, for the messages ("engine", "graph").

    Returns:
        One sentence per difference, naming the tensor; a tensor with shape differences also gets one line with
        both whole shapes.
    """
    expected = {spec.name: (INPUT, spec) for spec in graph.inputs}
    expected.update({spec.name: (OUTPUT, spec) for spec in graph.outputs})
    problems = []
    for name, (mode, spec) in expected.items():
        if name not in live_io:
            problems.append(f"{mode} {name!r}: in the manifest, not in the {source}")
            continue
        live_mode, live_dtype = live_io[name]
        if live_mode != mode:
            problems.append(f"{name!r}: the manifest lists it as an {mode}, the {source} as an {live_mode}")
        if np.dtype(live_dtype) != np.dtype(spec.dtype):
            problems.append(f"{mode} {name!r}: the {source}'s dtype is {np.dtype(live_dtype)}, the manifest's {spec.dtype}")
        if live_shapes is not None and name in live_shapes:
            shape_problems = _shape_mismatch(name, mode, tuple(live_shapes[name]), spec.shape, source)
            if shape_problems:
                shown = tuple(live_shapes[name])
                problems += shape_problems
                problems.append(f"{mode} {name!r}: manifest shape {tuple(spec.shape)}, {source} shape {shown}")
    for name in sorted(live_io.keys() - expected.keys()):
        problems.append(f"{live_io[name][0]} {name!r}: in the {source}, not in the manifest")
    return problems


def _fixed(dim: LiveDim) -> int | None:
    return dim if isinstance(dim, int) and dim >= 0 else None


def _shape_mismatch(
    name: str, mode: str, live: tuple[LiveDim, ...], manifest: tuple[int | str, ...], source: str
) -> list[str]:
    if len(live) != len(manifest):
        return [
            f"{mode} {name!r}: the {source}'s shape {live} has rank {len(live)}, the manifest's {manifest} {len(manifest)}"
        ]
    problems = []
    for axis, (have, want) in enumerate(zip(live, manifest)):
        fixed = _fixed(have)
        if isinstance(want, int) and fixed is not None and fixed != want:
            problems.append(f"{mode} {name!r}: axis {axis} is {fixed} in the {source}, {want} in the manifest")
        elif isinstance(want, str) and fixed is not None:
            problems.append(f"{mode} {name!r}: the {source} fixes axis {axis} to {fixed}, the manifest has {want}")
    return problems


def check_live_io(
    graph_name: str,
    graph: GraphEntry,
    where: str,
    live_io: Mapping[str, tuple[str, str]],
    live_shapes: Mapping[str, Sequence[LiveDim]],
    source: str,
    hint: str,
) -> None:
    """Raise :class:`BundleError` listing every :func:`io_mismatch` of a live backend against the manifest.

    Args:
        graph_name: the graph's name in the manifest.
        graph: its manifest entry.
        where: the file the backend loaded (named in the message).
        live_io, live_shapes, source: as for :func:`io_mismatch`.
        hint: what to do about it.

    Raises:
        BundleError: at least one name, direction, dtype or fixed dimension differs.
    """
    problems = io_mismatch(graph, live_io, live_shapes, source)
    if problems:
        raise BundleError(
            f"{where} does not match the {graph_name!r} graph of the manifest ({hint}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


#: Modules whose exception types ``Runner._backend_errors`` names as a backend failure.
BACKEND_MODULES = ("onnxruntime", "openvino", "tensorrt", "cuda")
#: What a graph that disagrees with its manifest tells the user.
EDITED_MANIFEST_HINT = "the manifest was edited or the graph file replaced: re-export the bundle"


class Runner(abc.ABC):
    """One graph on one backend. Use as a context manager or call activate()/deactivate()."""

    #: e.g. "onnxruntime:CPUExecutionProvider" or "tensorrt"
    backend: str = "?"

    def __init__(self, graph_name: str, graph: GraphEntry, dims: Mapping[str, DimRange]):
        self.graph_name = graph_name
        self.graph = graph
        self.dims = dict(dims)
        self.active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.active:
            with self._backend_errors("could not be loaded"):
                self._activate()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def metadata(self) -> Mapping[str, str] | None:
        """The graph's own metadata (ONNX ``metadata_props``) where the backend exposes it, else None."""
        return None

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns the outputs by name. Inputs are checked against the manifest first."""
        if not self.active:
            raise RuntimeError(f"{self.graph_name} runner is not active: call activate() or use it in a with-block")
        self.check_feeds(feeds)
        with self._backend_errors("failed"):
            return self._infer(feeds)

    @contextlib.contextmanager
    def _backend_errors(self, what: str) -> Iterator[None]:
        """Re-raise an exception of a backend's own type (ONNX Runtime's ``InvalidProtobuf``, ``Fail``, ... derive
        from ``Exception`` alone) as a RuntimeError naming the graph and the backend. Everything else passes through
        unchanged: our own errors, and bugs (a KeyError in this package keeps its traceback)."""
        try:
            yield
        except Exception as e:
            if not type(e).__module__.startswith(BACKEND_MODULES):
                raise
            raise RuntimeError(f"graph {self.graph_name} {what} on {self.backend}: {type(e).__name__}: {e}") from e

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = {spec.name: spec for spec in self.graph.inputs}
        missing = sorted(set(expected) - set(feeds))
        extra = sorted(set(feeds) - set(expected))
        if missing or extra:
            raise ValueError(f"{self.graph_name}: missing inputs {missing}, unexpected inputs {extra}")
        bound: dict[str, int] = {}
        for name, spec in expected.items():
            array = feeds[name]
            if not isinstance(array, np.ndarray):
                raise ValueError(f"{self.graph_name}.{name}: expected a numpy array, got {type(array).__name__}")
            if array.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{self.graph_name}.{name}: dtype {array.dtype}, the graph takes {spec.dtype}")
            if array.ndim != len(spec.shape):
                raise ValueError(f"{self.graph_name}.{name}: shape {array.shape}, the graph takes {spec.shape}")
            for axis, (size, want) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(want, int):
                    if size != want:
                        raise ValueError(f"{self.graph_name}.{name}: shape {array.shape}, the graph takes {spec.shape}")
                    continue
                if want in bound and bound[want] != size:
                    raise ValueError(
                        f"{self.graph_name}.{name}: dimension {axis} is {size} but {want} = {bound[want]} elsewhere"
                    )
                bound[want] = size
                limits = self.dims.get(want)
                if limits is not None and not limits.min <= size <= limits.max:
                    raise ValueError(
                        f"{self.graph_name}.{name}: {want} = {size} is outside the bundle's range {limits.min}..{limits.max}"
                        " (export with a larger --max-batch, or split the batch)"
                    )

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...


def deactivate_runners(runners: Iterable["Runner"]) -> None:
    """Deactivate every runner (each is a no-op when already inactive)."""
    for runner in runners:
        runner.deactivate()


def activate_runners(
    manifest: Manifest, graphs: Iterable[str], make: Callable[[str, GraphEntry], "Runner"]
) -> dict[str, "Runner"]:
    """Create (``make(name, graph)``) and activate one runner per graph; if one fails, those already active are
    deactivated again before the error propagates. Every backend opens its runners through this.

    Raises:
        ValueError: the bundle has no such graph.
    """
    runners: dict[str, Runner] = {}
    try:
        for name in graphs:
            if name not in manifest.graphs:
                raise ValueError(f"the bundle has no {name!r} graph (it has {sorted(manifest.graphs)})")
            runner = make(name, manifest.graphs[name])
            runner.activate()
            runners[name] = runner
            problems = metadata_problems(manifest.model, name, runner.metadata())
            if problems:
                raise BundleError("; ".join(problems) + f": {EDITED_MANIFEST_HINT}")
    except BaseException:
        deactivate_runners(runners.values())
        raise
    return runners
