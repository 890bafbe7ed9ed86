"""``mmgen-edge serve``: a bundle behind NVIDIA Triton Inference Server, through PyTriton (no model repository).

PyTriton starts a ``tritonserver`` process and binds Python callables as models: here the three models of
:mod:`mmgen_edge.sdk.protocol` (``mmgen_info``, ``mmgen_perceive``, ``mmgen_generate``). The callables run in this
process on the bundle's best local backend (TensorRT engines, ONNX Runtime CUDA or CPU), in ``instances`` loaded
copies of the model. It works on a CPU-only machine.

Validation before batching: the client-facing models have ``max_batch_size`` 1 (``FRONT_MAX_BATCH_SIZE``), so each
Triton ``execute`` holds one request, and ``front_instances`` Triton instances each (a Python stub process apiece),
so that many requests per model are in flight at once. A front instance checks its request alone
(:meth:`.handlers.RequestHandler.check`): a refused one fails its own execute, which Triton counts in
``nv_inference_request_failure`` (:mod:`.pytriton_errors`). An accepted one goes to the model's
:class:`~.batcher.Batcher`, which merges the requests of all front instances into engine batches (up to the
manifest's ``max_batch``, waiting at most ``max_queue_delay_us``; one worker per loaded model) and hands each
front its own response. Triton's queue policy (``max_queue_size``, per-request timeouts) stays on the front models.
``mmgen_info`` (one instance, ``max_batch_size`` 1 too) answers from the manifest and needs no batcher.

    with Server("samples/shapes/bundle") as server:       # 127.0.0.1: 8001 (gRPC), 8002 (metrics); http=True: 8000
        model = mmgen_edge.sdk.remote.connect(server.grpc_url)

``serve()`` runs until SIGINT/SIGTERM, then stops Triton (in-flight requests finish), closes the batchers and
returns.

Hardening (README journey 6):

* every request is checked on its own before it can join an engine batch (:mod:`.handlers`), and a refused one
  fails alone as a Triton failure with its reason (:mod:`.pytriton_errors`), so Triton's failure metrics and
  perf_analyzer see it while the requests sent with it are served;
* each model's queue is bounded (``max_queue_size``; more requests are refused by Triton at once) and a client may
  give a request a deadline (Triton's per-request ``timeout``, which the queue policy lets override): Triton
  rejects a request still queued at its deadline, and drops one whose gRPC client cancelled or went away before
  it reached the model. Work already running is not interrupted (PyTriton does not pass Triton's cancellation to
  the callable, and an engine batch serves several clients); it is bounded by ``MAX_STEPS`` steps per batch;
* Triton's admin endpoints (model repository, shared memory, trace, logging) need the ``access_token`` (PyTriton
  uses it to load the models; a random one by default); inference, metadata, health and statistics (read-only, no
  more than inference already tells) are open, so perf_analyzer works against ``serve`` out of the box;
* inference is unauthenticated: loopback by default, and a warning for any other address;
* a watchdog process (:mod:`.watchdog`) kills tritonserver and its stubs if this process dies without stopping
  them (SIGKILL, the OOM killer), so nothing keeps the ports.
"""

from __future__ import annotations

import functools
import ipaddress
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
from mmgen_edge.sdk.protocol import GENERATE_MODEL, INFO_MODEL, PERCEIVE_MODEL, model_specs

from .batcher import Batcher, BatcherClosed, default_front_instances
from .handlers import Request, RequestError, RequestHandler, Response, error_response
from .pytriton_errors import install_per_request_errors
from .watchdog import Watchdog, children, start_watchdog

LOG = logging.getLogger("mmgen_edge.serve")
LOOPBACK = "127.0.0.1"
ACCESS_TOKEN_ENV = "MMGEN_EDGE_ACCESS_TOKEN"
#: Triton endpoints that need the access token (PyTriton's defaults less "statistics", which perf_analyzer reads).
PROTECTED_ENDPOINTS = ("shared-memory", "model-repository", "trace", "logging")
#: Triton's max_batch_size for the client-facing models: one request per execute, so a refused one fails alone.
FRONT_MAX_BATCH_SIZE = 1


@dataclass(frozen=True)
class ServerOptions:
    host: str = LOOPBACK  # 0.0.0.0 exposes the server to the network
    http: bool = False  # Triton's HTTP/REST front end too (HTTP_WARNING); gRPC always
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    backend: str = "auto"
    instances: int = 1  # loaded copies of the model (concurrent batches); each holds its own sessions/engines
    front_instances: int | None = None  # requests in flight per model (Triton instances); None: front_instance_count
    max_queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    threads: int | None = None  # ONNX Runtime CPU threads per instance
    steps: int | None = None  # default sampler steps (the manifest's when None)
    verify: str = "full"
    max_queue_size: int = 256  # requests waiting per model; Triton refuses more at once
    access_token: str | None = None  # for Triton's admin endpoints (random when None); see PROTECTED_ENDPOINTS

    @property
    def listening_ports(self) -> tuple[int, ...]:
        """The ports Triton binds: HTTP (only with ``http``), gRPC, metrics."""
        return (*((self.http_port,) if self.http else ()), self.grpc_port, self.metrics_port)

    def check(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ValueError(f"{name.replace('_', ' ')} must be in 1..65535, got {port}")
        ports = list(self.listening_ports)
        if len(set(ports)) != len(ports):
            names = "the HTTP, gRPC and metrics ports" if self.http else "the gRPC and metrics ports"
            raise ValueError(f"{names} must differ, got {ports}")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.front_instances is not None and self.front_instances < 1:
            raise ValueError(f"front_instances must be >= 1, got {self.front_instances}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.access_token is not None and (len(self.access_token) < 16 or not self.access_token.isprintable() or " " in self.access_token):
            raise ValueError("the access token must be at least 16 printable characters without spaces")


def front_instance_count(options: ServerOptions, max_batch: int) -> int:
    """How many front instances each of ``mmgen_perceive`` / ``mmgen_generate`` gets: ``options.front_instances``,
    else enough to fill every model copy's engine batch, within a cap (:func:`.batcher.default_front_instances`;
    each is a Python stub process: README journey 6 gives its memory)."""
    if options.front_instances is not None:
        return options.front_instances
    return default_front_instances(max_batch, options.instances)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine ("localhost", 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


#: Why Triton's HTTP front end is opt-in (``--http``): in the Triton release PyTriton 0.7 bundles (2.51), a request
#: can end the whole server before any mmgen-edge code sees it, and gRPC refuses the same requests cleanly.
HTTP_WARNING = (
    "Triton's HTTP front end is on: in this Triton release a malformed HTTP request can stop the whole server (a "
    "declared tensor shape it allocates before checking, JSON nested ~200 000 deep) and a gzip body is inflated "
    "without a limit; serve HTTP only to trusted clients or behind a proxy that bounds bodies and refuses "
    "Content-Encoding (gRPC, always on, refuses the first two)"
)


def triton_endpoints(o: ServerOptions) -> dict[str, object]:
    """``TritonConfig`` fields for where Triton listens: gRPC and metrics always, HTTP only with ``o.http``."""
    endpoints: dict[str, object] = {
        "allow_http": o.http, "grpc_address": o.host, "grpc_port": o.grpc_port,
        "metrics_address": o.host, "metrics_port": o.metrics_port,
    }  # fmt: skip
    if o.http:
        endpoints.update(http_address=o.host, http_port=o.http_port)
    return endpoints


def exposure_warning(host: str) -> str | None:
    """The warning for binding ``host``: None on loopback; else what it exposes and what to do."""
    if is_loopback(host):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "") else host
    return (
        f"serving on {where}: anyone who can reach this machine can run inference (mmgen-edge serve has no "
        "authentication or TLS); put it behind an authenticating proxy (e.g. nginx with TLS and auth) or a service "
        "mesh, or bind 127.0.0.1 (README: journey 6, security)"
    )


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
        self._watchdog: Watchdog | None = None
        self._models: list[MMGenModel] = []
        self.handlers: list[RequestHandler] = []  # one per instance
        self.batchers: dict[str, Batcher[object, Response]] = {}  # perceive, generate: one worker per handler
        self.front_instances = 0  # Triton instances of mmgen_perceive and of mmgen_generate, once started
        self.access_token: str | None = None  # the token in use for the admin endpoints, once started

    def bind_urls(self) -> dict[str, str]:
        """Where Triton listens, as bound (``0.0.0.0`` stays ``0.0.0.0``): ``grpc``, ``metrics``, and ``http`` when on."""
        o = self.options
        host = f"[{o.host}]" if ":" in o.host else o.host
        urls = {"grpc": f"grpc://{host}:{o.grpc_port}", "metrics": f"http://{host}:{o.metrics_port}/metrics"}
        if o.http:
            urls["http"] = f"http://{host}:{o.http_port}"
        return urls

    @property
    def http_url(self) -> str:
        if not self.options.http:
            raise RuntimeError("this server has no HTTP front end: start it with http=True (CLI: --http)")
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
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy

        o = self.options
        check_ports_free(o.host, o.listening_ports)
        for warning in (exposure_warning(o.host), HTTP_WARNING if o.http else None):
            if warning:
                LOG.warning(warning)
        self._models = [
            load(self.bundle, backend=o.backend, steps=o.steps, threads=o.threads, verify=o.verify if i == 0 else "none")
            for i in range(o.instances)
        ]
        self.handlers = handlers = [RequestHandler(m) for m in self._models]
        specs = model_specs(self._models[0].manifest)
        _prepare_environment()
        config = triton_module.TritonConfig(**triton_endpoints(o), log_verbose=0)
        security = triton_module.TritonSecurityConfig(access_token=o.access_token, restricted_endpoints=list(PROTECTED_ENDPOINTS))
        self.access_token = security.access_token
        self._triton = triton_module.Triton(config=config, security_config=security)
        queue = QueuePolicy(allow_timeout_override=True, max_queue_size=o.max_queue_size)
        batch = self._models[0].manifest.max_batch
        self.front_instances = fronts = front_instance_count(o, batch)
        try:
            for name in (PERCEIVE_MODEL, GENERATE_MODEL):  # one worker per loaded model, fed by every front instance
                runners = [functools.partial(h.run, name) for h in handlers]
                self.batchers[name] = Batcher(name, runners, max_batch=batch, max_delay_s=o.max_queue_delay_us / 1e6)
            # bind every model before starting tritonserver (run()): a model bound to a running Triton loads at once,
            # before install_per_request_errors could give it its proxy model
            infer_funcs: dict[str, list[Callable[[list[Any]], list[Response]]]] = {
                INFO_MODEL: [_info_func(handlers[0])],
                **{name: [_front_func(name, handlers[0], self.batchers[name]) for _ in range(fronts)] for name in self.batchers},
            }
            for name, funcs in infer_funcs.items():
                spec = specs[name]
                self._triton.bind(
                    model_name=name,
                    infer_func=funcs,
                    inputs=_tensors(spec.inputs),
                    outputs=_tensors(spec.outputs, optional=False),
                    config=ModelConfig(
                        max_batch_size=FRONT_MAX_BATCH_SIZE,
                        batcher=DynamicBatcher(max_queue_delay_microseconds=0, default_queue_policy=queue),
                    ),
                    strict=True,
                )
                install_per_request_errors(self._triton, name)
            self._watchdog = start_watchdog()
            self._triton.run()  # starts tritonserver, loads the models
            self._guard_children()
        except BaseException:
            self.stop()
            raise
        urls = self.bind_urls()
        LOG.info("serving %s on %s (gRPC)%s", self.bundle, urls["grpc"], f" and {urls['http']} (HTTP)" if o.http else "")

    def _guard_children(self) -> None:
        if self._watchdog is not None:
            guarded = self._watchdog.guard(p for p in children(os.getpid()) if p != self._watchdog.process.pid)
            LOG.debug("the watchdog guards processes %s", guarded)

    def stop(self) -> None:
        """Stop Triton (waits for in-flight requests) and release the models. Safe to call twice."""
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()  # in-flight requests finish first: their batches run while the batchers are still open
        batchers, self.batchers = self.batchers, {}
        for batcher in batchers.values():
            batcher.close()
        if triton is not None:
            for i, handler in enumerate(self.handlers):
                sizes = json.dumps({str(k): v for k, v in sorted(handler.batch_sizes.items())})
                LOG.info("instance %d ran engine batches of size: %s", i, sizes)
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.disarm()
        models, self._models = self._models, []
        for model in models:
            model.close()

    def wait(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (or Triton dies)."""
        while not stop.wait(0.5):
            if self._triton is not None and not self._triton.is_alive():
                raise RuntimeError("the Triton server process stopped unexpectedly (see its log above)")


def _info_func(handler: RequestHandler) -> Callable[[list[Any]], list[Response]]:
    """The PyTriton callable of ``mmgen_info`` (a list of requests in, one response dict per request out)."""

    def infer(requests: list[Any]) -> list[Response]:
        return handler.serve(INFO_MODEL, [dict(r.data) for r in requests])

    return infer


def _front_func(model: str, handler: RequestHandler, batcher: Batcher[object, Response]) -> Callable[[list[Any]], list[Response]]:
    """The PyTriton callable of one front instance of ``model``: Triton hands it one request at a time
    (``FRONT_MAX_BATCH_SIZE``); it checks the request (``handler.check``, no model involved) and waits for its
    result from ``batcher``, which runs it in an engine batch with the requests of the other front instances."""

    def one(request: Request) -> Response:
        try:
            item = handler.check(model, request)
        except RequestError as e:
            return error_response(str(e))
        try:
            return batcher.run(item)
        except BatcherClosed as e:
            return error_response(str(e))
        except Exception as e:  # noqa: BLE001 - the batcher's own failure: this request's error, not a traceback
            LOG.exception("%s: a request failed in the batcher", model)
            return error_response(f"the server failed to run this batch ({type(e).__name__}: {e})")

    def infer(requests: list[Any]) -> list[Response]:
        return [one(dict(r.data)) for r in requests]

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
