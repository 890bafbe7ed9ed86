"""``mmgen-edge serve``: a bundle behind NVIDIA Triton Inference Server, through PyTriton (no model repository).

PyTriton starts a ``tritonserver`` process and binds Python callables as models: here the three models of
:mod:`mmgen_edge.sdk.protocol` (``mmgen_info``, ``mmgen_perceive``, ``mmgen_generate``), each with Triton's
dynamic batcher, so concurrent clients' requests are merged into one engine batch. The callables run in this
process on the bundle's best local backend (TensorRT engines, ONNX Runtime CUDA or CPU), one loaded model per
instance. It works on a CPU-only machine.

    with Server("samples/shapes/bundle") as server:       # 127.0.0.1, ports 8000 (HTTP), 8001 (gRPC), 8002
        model = mmgen_edge.sdk.remote.connect(server.grpc_url)

``serve()`` runs until SIGINT/SIGTERM, then stops Triton (in-flight requests finish) and returns.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sysconfig
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mmgen_edge.sdk.api import MMGenModel, load
from mmgen_edge.sdk.protocol import GENERATE_MODEL, INFO_MODEL, PERCEIVE_MODEL, ModelSpec, model_specs

from .handlers import RequestHandler

LOG = logging.getLogger("mmgen_edge.serve")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServerOptions:
    host: str = LOOPBACK  # 0.0.0.0 exposes the server to the network
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    backend: str = "auto"
    instances: int = 1  # loaded copies of the model (concurrent batches); each holds its own sessions/engines
    max_queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    threads: int | None = None  # ONNX Runtime CPU threads per instance
    steps: int | None = None  # default sampler steps (the manifest's when None)
    verify: str = "full"

    def check(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ValueError(f"{name.replace('_', ' ')} must be in 1..65535, got {port}")
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != 3:
            raise ValueError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` ports free on ``host`` right now (for tests and benchmarks; another process may still take one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_ports_free(host: str, ports: Sequence[int]) -> None:
    """Fail fast, naming the port, when one is taken (tritonserver would exit and PyTriton time out after ~1 min)."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise RuntimeError(f"cannot serve on {host}:{port}: {e.strerror or e}; choose another port with the port flags") from None


def python_library_dir() -> str:
    """Where this interpreter's libpython lives: Triton's Python backend stub links against it."""
    return str(sysconfig.get_config_var("LIBDIR") or "")


def _prepare_environment() -> None:
    """Put the interpreter's LIBDIR on LD_LIBRARY_PATH (inherited by tritonserver and its Python stubs)."""
    libdir = python_library_dir()
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def _import_pytriton() -> Any:
    try:
        import pytriton.triton as triton_module
    except ImportError as e:
        raise ImportError(
            f"mmgen-edge serve needs nvidia-pytriton ({e}); install it with: pip install 'mmgen-edge[serve]'"
        ) from None
    return triton_module


def _tensors(specs: Sequence[Any], optional: bool = True) -> list[Any]:
    from pytriton.model_config import Tensor

    return [Tensor(name=t.name, dtype=t.dtype, shape=t.shape, optional=t.optional and optional) for t in specs]


class Server:
    """A running PyTriton server for one bundle. ``start()``/``stop()`` or a with-block."""

    def __init__(self, bundle: str | os.PathLike[str], options: ServerOptions | None = None, **overrides: Any):
        self.bundle = Path(bundle)
        self.options = options or ServerOptions(**overrides)
        self.options.check()
        self._triton: Any = None
        self._models: list[MMGenModel] = []
        self.handlers: list[RequestHandler] = []  # one per instance

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._client_host}:{self.options.grpc_port}"

    @property
    def _client_host(self) -> str:
        return LOOPBACK if self.options.host in ("0.0.0.0", "") else self.options.host

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Load the bundle (one model per instance), start Triton, bind the models; returns once they are ready."""
        triton_module = _import_pytriton()
        from pytriton.model_config import DynamicBatcher, ModelConfig

        o = self.options
        check_ports_free(o.host, (o.http_port, o.grpc_port, o.metrics_port))
        self._models = [
            load(self.bundle, backend=o.backend, steps=o.steps, threads=o.threads, verify=o.verify if i == 0 else "none")
            for i in range(o.instances)
        ]
        self.handlers = handlers = [RequestHandler(m) for m in self._models]
        specs = model_specs(self._models[0].manifest)
        _prepare_environment()
        config = triton_module.TritonConfig(
            http_address=o.host, http_port=o.http_port, grpc_address=o.host, grpc_port=o.grpc_port,
            metrics_address=o.host, metrics_port=o.metrics_port, log_verbose=0,
        )  # fmt: skip
        self._triton = triton_module.Triton(config=config)
        try:
            self._triton.__enter__()
            bindings: list[tuple[ModelSpec, Callable[[RequestHandler], Callable[..., Any]], bool]] = [
                (specs[INFO_MODEL], lambda h: h.info, False),
                (specs[PERCEIVE_MODEL], lambda h: h.perceive, True),
                (specs[GENERATE_MODEL], lambda h: h.generate, True),
            ]
            for spec, method, batched in bindings:
                batcher = DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us) if batched else DynamicBatcher()
                self._triton.bind(
                    model_name=spec.name,
                    infer_func=[_infer_func(method(h)) for h in handlers] if batched else _infer_func(method(handlers[0])),
                    inputs=_tensors(spec.inputs),
                    outputs=_tensors(spec.outputs, optional=False),
                    config=ModelConfig(max_batch_size=spec.max_batch_size, batcher=batcher),
                    strict=True,
                )
            self._triton.run()
        except BaseException:
            self.stop()
            raise
        LOG.info("serving %s on %s (HTTP) and %s (gRPC)", self.bundle, self.http_url, self.grpc_url)

    def stop(self) -> None:
        """Stop Triton (waits for in-flight requests) and release the models. Safe to call twice."""
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
            for i, handler in enumerate(self.handlers):
                sizes = json.dumps({str(k): v for k, v in sorted(handler.batch_sizes.items())})
                LOG.info("instance %d ran engine batches of size: %s", i, sizes)
        models, self._models = self._models, []
        for model in models:
            model.close()

    def wait(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (or Triton dies)."""
        while not stop.wait(0.5):
            if self._triton is not None and not self._triton.is_alive():
                raise RuntimeError("the Triton server process stopped unexpectedly (see its log above)")


def _infer_func(handle: Callable[[list[Any]], list[dict[str, Any]]]) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """A PyTriton callable (a list of requests in, one response dict per request out) over a handler method."""

    def infer(requests: list[Any]) -> list[dict[str, Any]]:
        return handle([dict(r.data) for r in requests])

    return infer


def serve(bundle: str | os.PathLike[str], options: ServerOptions | None = None, on_ready: Callable[[Server], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (in-flight requests finish)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        LOG.info("signal %d: shutting down", signum)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Server(bundle, options) as server:
            if on_ready is not None:
                on_ready(server)
            server.wait(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
