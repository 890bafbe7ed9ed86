"""Serving through Triton on CPU: `mmgen-edge serve` (PyTriton) on 127.0.0.1 and the remote SDK client.

Needs the ``serve`` extra (nvidia-pytriton, tritonclient). Without it these tests skip, unless
MMGEN_EDGE_REQUIRE_SERVE=1 (set by CI), where a missing extra is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("MMGEN_EDGE_REQUIRE_SERVE") != "1":
    pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install 'mmgen-edge[serve]')")
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")

import mmgen_edge  # noqa: E402
from mmgen_edge.sdk.protocol import refusal_reason  # noqa: E402
from mmgen_edge.sdk.remote import RemoteError, RemoteModel, connect  # noqa: E402
from mmgen_edge.serve.server import Server  # noqa: E402
from serving import (  # noqa: E402
    assert_same_perception,
    counted_since,
    free_ports,
    image,
    kill_session_and_read,
    raw_infer,
    request_counters,
    session_processes,
    text_input as _bytes,
)

pytestmark = pytest.mark.slow
REQUEST_TIMEOUT_S = 60.0
CLIENT_THREADS, REQUESTS_PER_THREAD = 6, 3
BATCH_WINDOW_US = 200_000  # long enough that concurrent requests surely meet in the batcher


ACCESS_TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tiny_bundle):
    http, grpc, metrics = free_ports(3)
    with Server(
        tiny_bundle, http=True, http_port=http, grpc_port=grpc, metrics_port=metrics, max_queue_delay_us=BATCH_WINDOW_US, threads=1,
        access_token=ACCESS_TOKEN, backend="ort-cpu",  # the `local` reference's backend (auto is bf16 on AMX CPUs)
    ) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def local(tiny_bundle):
    with mmgen_edge.load(tiny_bundle, backend="ort-cpu", threads=1) as model:
        yield model


def test_concurrent_clients_get_the_local_results_and_are_batched(server, local):
    handler = server.handlers[0]
    before = sum(n * k for n, k in handler.batch_sizes.items())

    def client(thread: int) -> list[tuple[int, object]]:
        with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
            return [(s, model.perceive(image(s), seed=s)) for s in range(thread * 10, thread * 10 + REQUESTS_PER_THREAD)]

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        futures = [pool.submit(client, t) for t in range(CLIENT_THREADS)]
        results = [r for f in futures for r in f.result(timeout=REQUEST_TIMEOUT_S * 2)]
    assert len(results) == CLIENT_THREADS * REQUESTS_PER_THREAD
    for seed, remote in results:
        assert_same_perception(remote, local.perceive(image(seed), seed=seed))
        assert remote.backend == "remote" and remote.steps == local.steps
    served = sum(n * k for n, k in handler.batch_sizes.items()) - before
    assert served == CLIENT_THREADS * REQUESTS_PER_THREAD
    assert max(handler.batch_sizes) > 1, f"the batcher never merged requests: {dict(handler.batch_sizes)}"


def test_http_batched_perceive_and_noise_match_local(server, local):
    images = [image(1, 30, 30), image(2, 64, 48), image(3, 20, 90)]
    noise = np.random.default_rng(9).standard_normal(local.latent_shape(3), dtype=np.float32)
    with connect(server.http_url, timeout=REQUEST_TIMEOUT_S) as model:
        assert model.manifest == local.manifest
        remote = model.perceive(images, tasks=("depth", "segmentation"), noise=noise, steps=2, return_latents=True)
        seeded = model.perceive(images, seed=4, tasks=("depth",))
    here = local.perceive(images, tasks=("depth", "segmentation"), noise=noise, steps=2, return_latents=True)
    for r, h in zip(remote, here):
        np.testing.assert_allclose(r.latents, h.latents, atol=1e-4)
        np.testing.assert_allclose(r.depth, h.depth, atol=2e-2)
        assert r.normals is None and r.segmentation is not None and r.steps == 2
        assert r.segmentation.labels.shape == h.segmentation.labels.shape
    for r, h in zip(seeded, local.perceive(images, seed=4, tasks=("depth",))):
        np.testing.assert_allclose(r.depth, h.depth, atol=2e-2)


def test_generate_matches_local(server, local):
    disparity = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
        by_class = model.generate(class_label=1, cfg_scale=2.0, seed=5, return_latents=True)
        by_depth = model.generate(condition={"depth": disparity}, seed=6, return_latents=True)
    np.testing.assert_allclose(by_class.latents, local.generate(class_label=1, cfg_scale=2.0, seed=5, return_latents=True).latents, atol=1e-4)
    here = local.generate(condition={"depth": disparity}, seed=6, return_latents=True)
    np.testing.assert_allclose(by_depth.latents, here.latents, atol=1e-4)
    assert by_class.rgb.shape == here.rgb.shape and by_depth.condition == "depth" and by_depth.depth is None
    assert by_class.class_label == 1


def test_malformed_requests_get_clear_errors_and_the_server_keeps_serving(server, local):
    r = local.resolution
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
        bad_task = {"image": np.zeros((1, r, r, 3), np.uint8), "tasks": np.array([[b"depth,colour"]], dtype=np.bytes_)}
        with pytest.raises(RemoteError, match="unknown tasks"):
            model._infer("mmgen_perceive", bad_task)
        with pytest.raises(RemoteError, match="shape"):  # refused by Triton itself (wrong resolution)
            model._infer("mmgen_perceive", {"image": np.zeros((1, r // 2, r, 3), np.uint8)})
        with pytest.raises(RemoteError, match="class_label"):
            model._infer("mmgen_generate", {"class_label": np.array([[10_000]], np.int64)})
        with pytest.raises(RemoteError, match="condition_image"):
            model._infer("mmgen_generate", {"condition": np.array([[b"depth"]], dtype=np.bytes_)})
        with pytest.raises(RemoteError, match="batch-size must be <= 1"):  # refused by Triton (max_batch_size 1)
            model._infer("mmgen_perceive", {"image": np.zeros((2, r, r, 3), np.uint8)})
        with pytest.raises(ValueError, match="class_label"):  # checked client-side before sending
            model.generate(class_label=-3)
        # a bad request sent with good ones fails alone
        good = {"image": image(7, r, r)[None], "seed": np.array([[7]], np.int64)}
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(model._infer, "mmgen_perceive", req) for req in (good, bad_task, good, good)]
            outcomes = [f.exception(timeout=REQUEST_TIMEOUT_S) for f in futures]
        assert [o is None for o in outcomes] == [True, False, True, True]
        assert_same_perception(model.perceive(image(8), seed=8), local.perceive(image(8), seed=8))


def test_remote_stream_runs_the_served_model(server, local):
    frames = [image(20 + i, 36, 36) for i in range(4)]
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
        with model.stream(iter(frames), tasks=("depth",), seed=3) as stream:
            results = [result for result in stream]
    noise = np.random.default_rng(3).standard_normal(local.latent_shape(1)[1:], dtype=np.float32)
    assert len(results) == len(frames)
    for frame, item in zip(frames, results):
        np.testing.assert_array_equal(item.image, frame)
        result = item.result
        np.testing.assert_allclose(result.depth, local.perceive(frame, noise=noise, tasks=("depth",)).depth, atol=2e-2)


def test_connect_fails_clearly(tmp_path):
    (port,) = free_ports(1)
    with pytest.raises(ConnectionError, match="no server answers at"):
        connect(f"grpc://127.0.0.1:{port}", timeout=1.0)
    with pytest.raises(ValueError, match="grpc://host:port"):
        RemoteModel("ftp://somewhere")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process accounting reads /proc (Linux)")
def test_cli_serve_shuts_down_on_sigterm_and_leaves_no_process(tiny_bundle, tmp_path):
    http, grpc, metrics = free_ports(3)
    cli = [sys.executable, "-m", "mmgen_edge.cli", "serve", str(tiny_bundle), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--threads", "1"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with connect(f"grpc://127.0.0.1:{grpc}", timeout=REQUEST_TIMEOUT_S, connect_timeout=REQUEST_TIMEOUT_S) as model:
            assert model.perceive(image(1), seed=1).depth.shape == (40, 56)
        assert len(session_processes(process.pid)) >= 2, "expected the CLI and its tritonserver"
        with pytest.raises(ConnectionRefusedError):  # HTTP is opt-in (--http): nothing listens on --http-port
            socket.create_connection(("127.0.0.1", http), timeout=5).close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=REQUEST_TIMEOUT_S) == 0
        deadline = time.monotonic() + 10
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(process.pid) == [], "processes left behind after shutdown"
    finally:
        output = kill_session_and_read(process, log)
    assert "ready at grpc://127.0.0.1" in output and "stopped" in output, output[-2000:]
    assert "(HTTP)" not in output and "HTTP front end is on" not in output, output[-2000:]


def test_a_taken_port_is_named_before_anything_starts(tiny_bundle):
    http, grpc, metrics = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", grpc))
        taken.listen()
        with pytest.raises(RuntimeError, match=f"cannot serve on 127.0.0.1:{grpc}"):
            Server(tiny_bundle, http_port=http, grpc_port=grpc, metrics_port=metrics).start()


def test_server_options_are_checked(tiny_bundle):
    with pytest.raises(ValueError, match="the HTTP, gRPC and metrics ports must differ"):
        Server(tiny_bundle, http=True, http_port=9000, grpc_port=9000)
    Server(tiny_bundle, http_port=9000, grpc_port=9000, metrics_port=9002)  # no HTTP: its port is not used
    with pytest.raises(ValueError, match="the gRPC and metrics ports must differ"):
        Server(tiny_bundle, grpc_port=9000, metrics_port=9000)
    with pytest.raises(ValueError, match="instances"):
        Server(tiny_bundle, instances=0)
    with pytest.raises(ValueError, match="front_instances must be >= 1, got 0"):
        Server(tiny_bundle, front_instances=0)


def test_front_instances_default_fills_every_model_copy_within_a_cap(capsys):
    from mmgen_edge.cli import main
    from mmgen_edge.serve.batcher import DEFAULT_FRONT_INSTANCES
    from mmgen_edge.serve.server import ServerOptions, front_instance_count

    assert front_instance_count(ServerOptions(), max_batch=3) == 3  # the bundle's engine batch, no more
    assert front_instance_count(ServerOptions(instances=2), max_batch=1) == 2  # a batch for each model copy
    assert front_instance_count(ServerOptions(), max_batch=8) == DEFAULT_FRONT_INSTANCES < 8  # each is a process
    assert front_instance_count(ServerOptions(front_instances=12), max_batch=4) == 12
    for bad in ("0", "17", "two"):
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--front-instances", bad])
        assert exited.value.code == 2
        assert "argument --front-instances: must be an integer in 1..16" in capsys.readouterr().err



def test_cli_perceive_and_generate_with_server(server, tmp_path, capsys):
    import cv2

    from mmgen_edge.cli import main

    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), image(5))
    assert main(["perceive", str(path), "--server", server.grpc_url, "--out", str(tmp_path / "p"), "--json"]) == 0
    assert '"backend": "remote"' in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["frame_depth.png", "frame_normals.png", "frame_segmentation.png"]
    assert main(["generate", "--server", server.http_url, "--class-label", "2", "--out", str(tmp_path / "g")]) == 0
    assert any(p.name.startswith("sample0000") for p in (tmp_path / "g").iterdir())
    assert main(["perceive", str(path), "--server", server.grpc_url, "--bundle", "x"]) == 2


def test_serve_load_benchmark_reports_every_level(tiny_bundle, tmp_path, capsys):
    import json

    from mmgen_edge.bench.serve_load import main

    assert main(["--bundle", str(tiny_bundle), "--streams", "1,3", "--requests", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "serve_load.json").read_text())
    assert [row["streams"] for row in report["levels"]] == [1, 3]
    assert [row["requests"] for row in report["levels"]] == [2, 6]
    assert all(row["requests_per_s"] > 0 and row["p90_ms"] >= row["p50_ms"] > 0 for row in report["levels"])
    (batches,) = report["server_engine_batches"]  # one instance
    assert sum(int(size) * count for size, count in batches.items()) == 2 + 6 + 2  # requests + one warm-up per level
    assert "| 3 |" in capsys.readouterr().out


# ------------------------------------------------------------------------------ hardening (issue 12, section 1)
def _raw_client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.options.grpc_port}")


def _raw_infer(client, model: str, request: dict[str, np.ndarray], outputs: list[str] | None = None):
    return raw_infer(client, model, request, REQUEST_TIMEOUT_S, outputs)


def _counters(server, model: str) -> dict[str, float]:
    return request_counters(server.options.metrics_port, model)


def _counted(server, model: str, before: dict[str, float], want: dict[str, float]) -> dict[str, float]:
    return counted_since(server.options.metrics_port, model, before, want)


def test_every_request_field_is_bounded_and_refused_quickly(server, local):
    """Hostile values for each field fail alone, fast, naming the field; the server keeps serving."""
    r = local.resolution
    c, h, w = local.latent_shape(1)[1:]
    img = image(3, r, r)[None]
    perceive_cases = {
        "tasks": {"image": img, "tasks": _bytes(b"depth," * 200_000)},  # the 10 GB request
        "each task at most once": {"image": img, "tasks": _bytes(b"depth,depth")},
        "not UTF-8": {"image": img, "tasks": _bytes(b"depth,\xff\xfe")},
        "steps must be in 1..250": {"image": img, "steps": np.array([[10_000]], np.int32)},
        "seed must be in": {"image": img, "seed": np.array([[-7]], np.int64)},
        "NaN or infinite": {"image": img, "noise": np.full((1, c, h, w), np.inf, np.float32)},
    }
    generate_cases = {
        "cfg_scale must be a finite number in 0..100": {"cfg_scale": np.array([[1e6]], np.float32)},
        "cfg_scale must be a finite": {"cfg_scale": np.array([[np.nan]], np.float32)},
        "class_label must be in": {"class_label": np.array([[-2]], np.int64)},
        "condition": {"condition": _bytes(b"x" * 100_000), "condition_image": img},
    }
    client = _raw_client(server)
    try:
        start = time.monotonic()
        for model, cases in (("mmgen_perceive", perceive_cases), ("mmgen_generate", generate_cases)):
            for expected, request in cases.items():
                outcome = _raw_infer(client, model, request)
                assert isinstance(outcome, Exception), f"{model} accepted a request with bad {expected!r}"
                assert expected in outcome.message(), outcome.message()
                assert "Traceback" not in outcome.message()
        info = _raw_infer(client, "mmgen_info", {"query": _bytes(b"q" * 1000)})
        assert isinstance(info, Exception) and "at most 64" in info.message()
        assert time.monotonic() - start < 15, "refusing ten bad requests took too long"
    finally:
        client.close()
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
        with pytest.raises(ValueError, match="at most once"):  # the local model's policy, before anything is sent
            model.perceive(image(8), seed=8, tasks=("depth", "depth"))
        served = model.perceive(image(8), seed=8, tasks=("depth",))  # and the server keeps serving
    here = local.perceive(image(8), seed=8, tasks=("depth",))
    assert served.images.keys() == here.images.keys() == {"depth"}
    np.testing.assert_allclose(served.depth, here.depth, atol=2e-2)


def _engine_batches(server) -> dict[int, int]:
    return {size: count for handler in server.handlers for size, count in handler.batch_sizes.items()}


def test_a_bad_request_sent_with_good_ones_is_a_triton_failure_and_they_are_batched(server, local):
    """A non-UTF-8 request sent at the same time as good ones: an InferenceServerException (status and message)
    counted in nv_inference_request_failure for it, results counted as successes for the others, which still run
    as one engine batch (they would all have met in Triton's dynamic batcher before, where the refusal counted as a
    success)."""
    import tritonclient.grpc as grpcclient

    r = local.resolution
    good = [{"image": image(30 + i, r, r)[None], "seed": np.array([[30 + i]], np.int64)} for i in range(3)]
    bad = {"image": image(9, r, r)[None], "tasks": _bytes(b"\xc3\x28")}
    clients = [_raw_client(server) for _ in range(4)]
    try:
        before, batches_before = _counters(server, "mmgen_perceive"), _engine_batches(server)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_raw_infer, c, "mmgen_perceive", q) for c, q in zip(clients, (good[0], bad, good[1], good[2]))]
            outcomes = [f.result(timeout=REQUEST_TIMEOUT_S) for f in futures]
    finally:
        for c in clients:
            c.close()
    assert isinstance(outcomes[1], Exception) and "not UTF-8" in outcomes[1].message()
    assert "Traceback" not in outcomes[1].message()
    for seed, outcome in zip((30, 31, 32), (outcomes[0], outcomes[2], outcomes[3])):
        assert isinstance(outcome, grpcclient.InferResult), outcome
        np.testing.assert_allclose(
            outcome.as_numpy("latents")[0], local.perceive(image(seed, r, r), seed=seed, return_latents=True).latents, atol=1e-4
        )
    want = {"nv_inference_request_failure": 1, "nv_inference_request_success": 3}
    assert _counted(server, "mmgen_perceive", before, want) == want
    batches = {n: k - batches_before.get(n, 0) for n, k in _engine_batches(server).items()}
    assert sum(n * k for n, k in batches.items()) == 3, batches  # the refused request reached no engine batch
    assert max(n for n, k in batches.items() if k) > 1, f"the good requests were never batched together: {batches}"


def test_a_failing_engine_batch_fails_each_of_its_requests(server, local, monkeypatch):
    """An engine batch that raises: each of its requests is a Triton failure with the reason, nothing hangs, and
    the server serves again once the engine does."""
    r = local.resolution

    def broken(items):
        raise RuntimeError(f"the engine broke on a batch of {len(items)}")

    for handler in server.handlers:
        monkeypatch.setattr(handler, "_perceive", broken)
    requests = [{"image": image(40 + i, r, r)[None], "seed": np.array([[40 + i]], np.int64)} for i in range(3)]
    clients = [_raw_client(server) for _ in requests]
    try:
        before = _counters(server, "mmgen_perceive")
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(_raw_infer, c, "mmgen_perceive", q) for c, q in zip(clients, requests)]
            outcomes = [f.result(timeout=REQUEST_TIMEOUT_S) for f in futures]
    finally:
        for c in clients:
            c.close()
    for outcome in outcomes:
        assert isinstance(outcome, Exception), outcome
        assert "the server failed to run this batch (RuntimeError: the engine broke on a batch of" in outcome.message()
    want = {"nv_inference_request_failure": 3, "nv_inference_request_success": 0}
    assert _counted(server, "mmgen_perceive", before, want) == want
    monkeypatch.undo()
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:
        assert_same_perception(model.perceive(image(8), seed=8), local.perceive(image(8), seed=8))


def test_refused_requests_on_their_own_are_triton_failures(server, local):
    """What perf_analyzer sends when its input is wrong: the same refused request again and again. Each is one
    failure in nv_inference_request_failure (none a success), with its reason and no traceback."""
    r = local.resolution
    bad = {"image": image(9, r, r)[None], "steps": np.array([[10_000]], np.int32)}
    client = _raw_client(server)
    try:
        before = _counters(server, "mmgen_perceive")
        outcomes = [_raw_infer(client, "mmgen_perceive", bad) for _ in range(3)]
        served = _raw_infer(client, "mmgen_perceive", {"image": image(10, r, r)[None], "seed": np.array([[10]], np.int64)})
        want = {"nv_inference_request_failure": 3, "nv_inference_request_success": 1}
        counted = _counted(server, "mmgen_perceive", before, want)
    finally:
        client.close()
    for outcome in outcomes:
        assert isinstance(outcome, Exception), outcome
        message = outcome.message()
        assert "steps must be in 1..250" in message, message
        assert "Traceback" not in message and "model.py" not in message and "/tmp" not in message, message
    assert not isinstance(served, Exception), served
    assert counted == want, counted
    client = _raw_client(server)
    try:  # naming an output its tasks do not produce: refused by name (PyTriton answered 200 without it)
        depth = {"image": image(11, r, r)[None], "tasks": np.array([[b"depth"]], np.object_)}
        unmade = _raw_infer(client, "mmgen_perceive", depth, outputs=["image_normal"])
        made = _raw_infer(client, "mmgen_perceive", depth, outputs=["image_depth"])
    finally:
        client.close()
    assert isinstance(unmade, Exception) and "requested output(s) image_normal are not produced" in unmade.message()
    assert not isinstance(made, Exception) and made.as_numpy("image_depth").shape == (1, r, r, 3)
    assert refusal_reason(outcomes[0].message()) == "steps must be in 1..250 (or 0 for the default), got 10000"
    with connect(server.grpc_url, timeout=REQUEST_TIMEOUT_S) as model:  # the SDK shows the reason alone
        # (the SDK checks steps itself before sending: this is what a request from an older client meets)
        with pytest.raises(RemoteError, match=r"^mmgen_perceive at grpc://\S+: steps must be in 1\.\.250 \(or 0 for the default\), got 10000$"):
            model._infer("mmgen_perceive", bad)


def test_statistics_are_open_and_admin_endpoints_need_the_token(server):
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{server.options.http_port}"
    stats = json.loads(urllib.request.urlopen(f"{base}/v2/models/mmgen_perceive/stats", timeout=10).read())
    assert stats["model_stats"][0]["name"] == "mmgen_perceive"
    index = urllib.request.Request(f"{base}/v2/repository/index", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(index, timeout=10)
    assert refused.value.code in (401, 403)
    index.add_header("triton-access-token", ACCESS_TOKEN)
    with urllib.request.urlopen(index, timeout=10) as answer:  # PyTriton loads models through the API: [] here
        assert answer.status == 200 and isinstance(json.loads(answer.read()), list)
    assert server.access_token == ACCESS_TOKEN
    client = _raw_client(server)
    config = client.get_model_config("mmgen_perceive", as_json=True)["config"]
    client.close()
    policy = config["dynamic_batching"]["default_queue_policy"]
    assert int(policy["max_queue_size"]) == server.options.max_queue_size and policy["allow_timeout_override"]
    # one request per execute (a refusal fails its own execute); front instances let requests meet in the batcher
    assert int(config["max_batch_size"]) == 1
    assert int(config["instance_group"][0]["count"]) == server.batchers["mmgen_perceive"].max_batch == 4


@pytest.mark.skipif(shutil.which("perf_analyzer") is None, reason="perf_analyzer is not on PATH (Triton's SDK container or pip install perf-analyzer)")
def test_perf_analyzer_runs_against_serve(server, tmp_path):
    r = server.handlers[0].model.resolution
    data = {"data": [{"image": {"content": [0] * (r * r * 3), "shape": [r, r, 3]}}]}
    (tmp_path / "input.json").write_text(json.dumps(data))
    cmd = ["perf_analyzer", "-m", "mmgen_perceive", "-u", f"127.0.0.1:{server.options.grpc_port}", "-i", "grpc",
           "--input-data", str(tmp_path / "input.json"), "--concurrency-range", "2", "--measurement-interval", "2000"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Throughput" in done.stdout


def _ports_free(ports) -> bool:
    from mmgen_edge.serve.server import check_ports_free

    try:
        check_ports_free("0.0.0.0", ports)
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process accounting reads /proc (Linux)")
def test_sigkilled_serve_on_all_interfaces_warns_and_leaves_no_process_or_port(tiny_bundle, tmp_path):
    """--host 0.0.0.0 warns and prints the real bind address; SIGKILL with requests in flight leaves nothing behind."""
    ports = free_ports(3, host="0.0.0.0")
    http, grpc, metrics = ports
    cli = [sys.executable, "-m", "mmgen_edge.cli", "serve", str(tiny_bundle), "--host", "0.0.0.0", "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--threads", "1"]  # fmt: skip
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"grpc://127.0.0.1:{grpc}"
        with connect(url, timeout=REQUEST_TIMEOUT_S, connect_timeout=REQUEST_TIMEOUT_S):
            pass
        assert len(session_processes(process.pid)) >= 2, "expected the CLI and its tritonserver"

        def busy() -> None:  # requests in flight when the server dies (they would hold tritonserver's shutdown)
            try:
                with connect(url, timeout=REQUEST_TIMEOUT_S) as model:
                    while True:
                        model.perceive(image(1), steps=250, seed=1)
            except (RemoteError, ConnectionError):
                pass

        pool = ThreadPoolExecutor(3)
        busy_clients = [pool.submit(busy) for _ in range(3)]
        time.sleep(2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while (session_processes(process.pid) or not _ports_free(ports)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(process.pid) == [], "tritonserver or its stubs outlived the killed server"
        assert _ports_free(ports), "a port is still held after the server was killed"
        for f in busy_clients:
            f.result(timeout=REQUEST_TIMEOUT_S)
        pool.shutdown()
    finally:
        output = kill_session_and_read(process, log)
    assert f"ready at grpc://0.0.0.0:{grpc}" in output, output[-2000:]
    assert "every network interface" in output and "no authentication" in output, output[-2000:]
    assert f"clients on this machine connect to grpc://127.0.0.1:{grpc}" in output
    assert "watchdog: server" in output and "killed" in output, output[-2000:]


def test_connect_to_a_closed_port_fails_fast_and_the_cli_says_why(tmp_path, capsys):
    import cv2

    from mmgen_edge.cli import main

    (port,) = free_ports(1)
    for url in (f"grpc://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=f"no server answers at {url}.*mmgen-edge serve"):
            connect(url, timeout=REQUEST_TIMEOUT_S, connect_timeout=2.0)
        assert time.monotonic() - start < 6
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), image(5))
    start = time.monotonic()
    assert main(["perceive", str(path), "--server", f"grpc://127.0.0.1:{port}", "--out", str(tmp_path / "p")]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"no server answers at grpc://127.0.0.1:{port}" in err and "Traceback" not in err
