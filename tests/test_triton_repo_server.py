"""The model repository of ``mmgen-edge triton-repo`` in a REAL ``tritonserver``, on CPU, with the remote SDK client.

The server is the ``tritonserver`` binary bundled with nvidia-pytriton (the ``serve`` extra), started the way PyTriton
starts it. That build has only the Python backend, so each ONNX Runtime component model (``mmgen_<graph>``) is
replaced by a Python-backend stand-in: its written config.pbtxt with ``backend: "onnxruntime"`` turned into
``backend: "python"`` (names, data types, dims, reshape, batch limit and dynamic batcher stay as written) and a
``model.py`` running the written ``1/model.onnx`` with ONNX Runtime on CPU. The entry models (``mmgen_info``,
``mmgen_perceive``, ``mmgen_generate``: Python BLS importing :mod:`mmgen_edge.serve.triton_bls`) are served exactly
as written, so their configs, the BLS calls (front to batched model, batched model to component models) and the
wire contract all go through Triton.

Needs the ``serve`` extra. Without it these tests skip, unless MMGEN_EDGE_REQUIRE_SERVE=1 (set by CI), where a
missing extra is a failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("MMGEN_EDGE_REQUIRE_SERVE") != "1":
    pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install 'mmgen-edge[serve]')")
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")

import tritonclient.grpc as grpcclient  # noqa: E402

import mmgen_edge  # noqa: E402
from mmgen_edge.runtime.backend import RUNTIME_GRAPHS  # noqa: E402
from mmgen_edge.sdk.remote import RemoteError, connect  # noqa: E402
from mmgen_edge.serve.triton_repo import component_model_name, write_model_repository  # noqa: E402
from serving import (  # noqa: E402
    assert_same_perception,
    counted_since,
    free_ports,
    image,
    raw_infer,
    request_counters,
    session_processes,
    text_input,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="tritonserver and the process checks need Linux"),
]
ENTRY_MODELS = ("mmgen_info", "mmgen_perceive", "mmgen_generate", "mmgen_perceive_batched", "mmgen_generate_batched")
#: The repository as the tests write it: a batching window long enough that concurrent requests surely meet.
REPO_OPTIONS = {"max_queue_delay_us": 100_000}
READY_TIMEOUT_S = 90.0
REQUEST_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CLIENT_THREADS = 6

#: The stand-in for an ONNX Runtime component model: Triton's Python backend running the model's 1/model.onnx.
STAND_IN_MODEL = '''\
"""Test stand-in for Triton's ONNX Runtime backend: runs 1/model.onnx with ONNX Runtime (CPU), one request at a time."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

ONNX_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_FP16": "tensor(float16)", "TYPE_INT64": "tensor(int64)", "TYPE_INT32": "tensor(int32)"}


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        config = json.loads(args["model_config"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # As ONNX Runtime's backend does at load: the config's tensors (their reshape where given, after the batch
        # axis when batched) must match the graph's names, element types, ranks and static sizes.
        self.ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self.outputs = [o["name"] for o in config["output"]]
        for kind, tensors, graph in (("input", config["input"], self.session.get_inputs()), ("output", config["output"], self.session.get_outputs())):
            graph = {g.name: g for g in graph}
            if sorted(t["name"] for t in tensors) != sorted(graph):
                raise ValueError(f"{self.name}: config {kind}s {[t['name'] for t in tensors]}, the graph has {sorted(graph)}")
            for tensor in tensors:
                node = graph[tensor["name"]]
                reshape = tensor.get("reshape")
                dims = [int(d) for d in (reshape.get("shape", []) if reshape is not None else tensor["dims"])]
                shape = ([-1] if self.batched else []) + dims
                static = [d if isinstance(d, int) else -1 for d in node.shape]
                if len(shape) != len(static) or any(-1 not in (a, b) and a != b for a, b in zip(shape, static)):
                    raise ValueError(f"{self.name}: {kind} {tensor['name']!r} is {shape} in the config, {node.shape} in the graph")
                if ONNX_TYPES[tensor["data_type"]] != node.type:
                    raise ValueError(f"{self.name}: {kind} {tensor['name']!r} is {tensor['data_type']}, {node.type} in the graph")

    def _feed(self, name, array):
        """Triton delivers each input as configured (reshape applied); the graph must take exactly that."""
        if array.ndim != self.ranks[name]:
            raise ValueError(f"{self.name}: input {name!r} arrived as {array.shape}, the graph takes rank {self.ranks[name]}")
        return array

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {}
                for name in self.ranks:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise ValueError(f"{self.name}: input {name!r} is missing")
                    feeds[name] = self._feed(name, tensor.as_numpy())
                results = self.session.run(self.outputs, feeds)
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(self.outputs, results)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as e:  # noqa: BLE001 - the error goes back to the BLS caller
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        return responses
'''


# --------------------------------------------------------------------------------------------- the server
def bundled_tritonserver() -> tuple[Path, Path, Path]:
    """(tritonserver binary, its Python backend folder, the Python backend stub for this interpreter) of PyTriton."""
    try:
        import pytriton
    except ImportError as e:
        pytest.fail(f"MMGEN_EDGE_REQUIRE_SERVE=1 but nvidia-pytriton is missing ({e})")
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = (root / "bin" / "tritonserver", root / "backends" / "python", root / "python_backend_stubs" / version / "triton_python_backend_stub")  # fmt: skip
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        message = f"nvidia-pytriton has no bundled tritonserver for Python {version}: missing {missing}"
        if os.environ.get("MMGEN_EDGE_REQUIRE_SERVE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return paths


def server_libs_path() -> Path:
    """tritonserver's own shared libraries (as ``pytriton.utils.distribution.get_libs_path``)."""
    from pytriton.utils.distribution import get_libs_path

    return Path(get_libs_path())


def stand_in_component_models(repo: Path) -> None:
    """Serve each ONNX Runtime component model on the Python backend (the bundled server has no other)."""
    for graph in RUNTIME_GRAPHS:
        model_dir = repo / component_model_name(graph)
        config = (model_dir / "config.pbtxt").read_text()
        assert config.count('backend: "onnxruntime"') == 1, f"{model_dir.name} is not an ONNX Runtime model:\n{config}"
        assert (model_dir / "1" / "model.onnx").is_file()
        (model_dir / "config.pbtxt").write_text(config.replace('backend: "onnxruntime"', 'backend: "python"'))
        (model_dir / "1" / "model.py").write_text(STAND_IN_MODEL)


class TritonProcess:
    """``tritonserver --model-repository REPO`` on 127.0.0.1, in its own session, launched as PyTriton does."""

    def __init__(self, repo: Path, workdir: Path):
        binary, python_backend, stub = bundled_tritonserver()
        backends = workdir / "backends"
        shutil.copytree(python_backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")  # the backend looks for it beside itself
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.grpc_url = f"grpc://127.0.0.1:{self.grpc_port}"
        self.log_path = workdir / "tritonserver.log"
        prefix = f"mmgen-test{os.getpid()}-{secrets.token_hex(4)}"  # shared-memory regions of this server only
        self.command = [
            str(binary), "--model-repository", str(repo), "--backend-directory", str(backends),
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port), "--allow-gpu-metrics", "false",
            "--backend-config", f"python,shm-region-prefix-name={prefix}",
            "--backend-config", "python,shm-default-byte-size=4194304",
            "--backend-config", "python,shm-growth-byte-size=1048576",
            "--exit-timeout-secs", str(int(STOP_TIMEOUT_S // 2)), "--log-verbose", "0",
        ]  # fmt: skip
        env = os.environ.copy()
        # the Python stubs embed this interpreter: its libpython (LIBDIR) and, found on PATH, this environment
        libs = [str(sysconfig.get_config_var("LIBDIR") or ""), *env.get("LD_LIBRARY_PATH", "").split(os.pathsep), str(server_libs_path())]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        self.sid = self.process.pid

    def log(self, tail: int = 4000) -> str:
        """The server's error lines (a model that failed to load says why), then the end of its log."""
        text = self.log_path.read_text(errors="replace")
        errors = [line for line in text.splitlines() if line.startswith("E")]
        return "\n".join(["errors:", *errors[:20], "log tail:", text[-tail:]])

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"tritonserver exited with {self.process.returncode} while loading:\n{self.log()}")
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in ENTRY_MODELS):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.25)
            raise AssertionError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log()}")
        finally:
            client.close()

    def stop(self) -> int | None:
        """SIGTERM (graceful: in-flight requests finish), then SIGINT, then kill the whole session."""
        if self.process.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGINT, 5.0)):
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.process.poll() is None:
            os.killpg(self.sid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode

    def kill_leftovers(self) -> None:
        for pid in session_processes(self.sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory):
    repo = write_model_repository(tiny_bundle, tmp_path_factory.mktemp("triton-server") / "repo", **REPO_OPTIONS)
    stand_in_component_models(repo)
    return repo


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    triton = TritonProcess(repo, tmp_path_factory.mktemp("tritonserver"))
    try:
        triton.wait_ready()
        yield triton
    finally:
        triton.stop()
        triton.kill_leftovers()


@pytest.fixture(scope="module")
def local(tiny_bundle):
    with mmgen_edge.load(tiny_bundle, backend="ort-cpu", threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def remote(server):
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
        yield model


# ------------------------------------------------------------------------------------------------- the tests
def test_entry_models_are_served_as_written_and_components_by_stand_ins(server, repo, tiny_bundle, tmp_path):
    written = write_model_repository(tiny_bundle, tmp_path / "written", **REPO_OPTIONS)
    for name in ENTRY_MODELS:  # the entry models are exactly what the writer wrote
        for path in sorted(p for p in (written / name).rglob("*") if p.is_file()):
            assert (repo / name / path.relative_to(written / name)).read_bytes() == path.read_bytes(), path
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        for graph in RUNTIME_GRAPHS:  # Triton accepted the written component configs (only the backend changed)
            name = component_model_name(graph)
            assert client.is_model_ready(name), name
            config = client.get_model_config(name, as_json=True)["config"]
            assert config["backend"] == "python"
            want = (written / name / "config.pbtxt").read_text().replace('backend: "onnxruntime"', 'backend: "python"')
            assert (repo / name / "config.pbtxt").read_text() == want
    finally:
        client.close()


def test_remote_perceive_and_generate_equal_the_local_sdk(server, remote, local):
    assert remote.manifest == local.manifest
    images = [image(1), image(2, 30, 30)]
    served = remote.perceive(images, seed=3, return_latents=True)  # two concurrent requests, rows of one seeded draw
    here = local.perceive(images, seed=3, return_latents=True)
    assert len(served) == len(here) == 2
    for r, h in zip(served, here):
        assert_same_perception(r, h, latents=True)
    assert_same_perception(remote.perceive(image(4), seed=4, return_latents=True), local.perceive(image(4), seed=4, return_latents=True), latents=True)  # fmt: skip

    by_class = remote.generate(class_label=1, cfg_scale=2.0, seed=5, return_latents=True)
    want = local.generate(class_label=1, cfg_scale=2.0, seed=5, return_latents=True)
    np.testing.assert_allclose(by_class.latents, want.latents, atol=1e-4)
    assert by_class.class_label == 1 and by_class.rgb.shape == want.rgb.shape
    assert np.abs(by_class.rgb.astype(int) - want.rgb).max() <= 1

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:  # the work went through the component models (BLS), each run by Triton
        for graph in RUNTIME_GRAPHS:
            stats = client.get_inference_statistics(component_model_name(graph), as_json=True)["model_stats"][0]
            assert int(stats["inference_stats"]["success"].get("count", 0)) > 0, graph
    finally:
        client.close()


def test_concurrent_clients_all_get_the_local_results(server, local):
    def client(seed: int):
        with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
            return model.perceive(image(seed), seed=seed)

    seeds = [10 + i for i in range(CLIENT_THREADS)]
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        futures = [pool.submit(client, s) for s in seeds]
        results = [f.result(timeout=REQUEST_TIMEOUT_S * 2) for f in futures]
    for seed, served in zip(seeds, results):
        assert_same_perception(served, local.perceive(image(seed), seed=seed))


def test_a_malformed_request_gets_a_clear_error_and_the_server_keeps_serving(server, remote, local):
    r = local.resolution
    bad = {"image": np.zeros((1, r, r, 3), np.uint8), "tasks": np.array([[b"depth,colour"]], dtype=np.bytes_)}
    with pytest.raises(RemoteError, match="unknown tasks"):
        remote._infer("mmgen_perceive", bad)
    assert_same_perception(remote.perceive(image(8), seed=8), local.perceive(image(8), seed=8))
    assert server.process.poll() is None


def test_refused_requests_on_their_own_are_triton_failures(server, remote, local):
    import urllib.request

    def failures() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        lines = [line for line in text.splitlines() if line.startswith("nv_inference_request_failure{") and 'model="mmgen_perceive"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    r = local.resolution
    bad = {"image": np.zeros((1, r, r, 3), np.uint8), "steps": np.array([[10_000]], np.int32)}
    before = failures()
    for _ in range(2):
        with pytest.raises(RemoteError, match=r"^mmgen_perceive at grpc://\S+: mmgen_perceive: steps must be in 1\.\.250"):
            remote._infer("mmgen_perceive", bad)
    deadline = time.monotonic() + 10  # Triton counts a request when it releases it, just after the response
    while failures() - before < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert failures() - before == 2


def test_a_refused_request_sent_with_good_ones_is_a_failure_and_they_are_batched(server, local):
    """A non-UTF-8 request sent at the same time as good ones: a Triton failure (status and message) counted in
    nv_inference_request_failure of mmgen_perceive; the good ones are successes with the local results, and met in
    one batch of mmgen_perceive_batched."""
    r = local.resolution
    good = [{"image": image(30 + i, r, r)[None], "seed": np.array([[30 + i]], np.int64)} for i in range(3)]
    bad = {"image": image(9, r, r)[None], "tasks": text_input(b"\xc3\x28")}
    clients = [grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") for _ in range(4)]

    def batched_stats() -> dict:
        return clients[0].get_inference_statistics("mmgen_perceive_batched", as_json=True)["model_stats"][0]

    try:
        before, stats_before = request_counters(server.metrics_port, "mmgen_perceive"), batched_stats()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(raw_infer, c, "mmgen_perceive", q, REQUEST_TIMEOUT_S) for c, q in zip(clients, (good[0], bad, good[1], good[2]))]  # fmt: skip
            outcomes = [f.result(timeout=REQUEST_TIMEOUT_S * 2) for f in futures]
        stats_after = batched_stats()
    finally:
        for c in clients:
            c.close()
    assert isinstance(outcomes[1], Exception) and "mmgen_perceive: input 'tasks' is not UTF-8" in outcomes[1].message()
    for seed, outcome in zip((30, 31, 32), (outcomes[0], outcomes[2], outcomes[3])):
        assert isinstance(outcome, grpcclient.InferResult), outcome
        want = local.perceive(image(seed, r, r), seed=seed, return_latents=True)
        np.testing.assert_allclose(outcome.as_numpy("latents")[0], want.latents, atol=1e-4)
    want = {"nv_inference_request_failure": 1, "nv_inference_request_success": 3}
    assert counted_since(server.metrics_port, "mmgen_perceive", before, want) == want

    def count(stats: dict, key: str) -> int:
        return int(stats.get(key, 0))

    requests = count(stats_after, "inference_count") - count(stats_before, "inference_count")
    executions = count(stats_after, "execution_count") - count(stats_before, "execution_count")
    assert requests == 3, "the refused request reached the batched model"
    assert executions < requests, "the good requests never met in one batch of mmgen_perceive_batched"


def test_shutdown_leaves_no_process(server):
    assert len(session_processes(server.sid)) >= 2, "expected tritonserver and its Python backend stubs"
    code = server.stop()
    deadline = time.monotonic() + 10
    while session_processes(server.sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = session_processes(server.sid)
    assert left == [], f"processes left behind after shutdown: {left}\n{server.log()}"
    assert code == 0, f"tritonserver exited with {code}:\n{server.log()}"
