"""Helpers shared by the serving tests (test_serve.py, test_triton_repo_server.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mmgen_edge.sdk.protocol import TRITON_DTYPES
from mmgen_edge.serve.server import free_ports  # noqa: F401  (re-exported for the tests)


def image(seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def session_processes(sid: int) -> list[int]:
    """PIDs of live processes in session ``sid`` (a server started with start_new_session and all it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def assert_same_perception(remote, local, latents: bool = False) -> None:
    """A served perceive result equals the local SDK's (decoded maps within 1 grey level)."""
    assert remote.images.keys() == local.images.keys()
    for key in local.images:
        assert remote.images[key].shape == local.images[key].shape, key
        assert np.abs(remote.images[key].astype(int) - local.images[key]).max() <= 1, key
    np.testing.assert_allclose(remote.depth, local.depth, atol=2e-2)
    np.testing.assert_allclose(remote.normals, local.normals, atol=2e-2)
    assert remote.depth.shape == local.depth.shape
    if latents:
        np.testing.assert_allclose(remote.latents, local.latents, atol=1e-4)
    assert remote.backend == "remote" and remote.steps == local.steps


def kill_session_and_read(process, log) -> str:
    """Kill what is left of a server started in its own session (``process``) and return its log (closing it)."""
    import os
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    for pid in session_processes(process.pid):
        os.kill(pid, signal.SIGKILL)
    log.seek(0)
    output = log.read()
    log.close()
    return output


def text_input(value: bytes) -> np.ndarray:
    """One request's BYTES input as tritonclient sends it (batch axis included)."""
    return np.array([[value]], dtype=np.object_)


def raw_infer(client, model: str, request: dict[str, np.ndarray], timeout_s: float, outputs: list[str] | None = None):
    """One request through a tritonclient gRPC client as is (no SDK checks), naming ``outputs`` if given: the
    result, or the InferenceServerException (status and message)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tensors = []
    for name, array in request.items():
        kind = TRITON_DTYPES[np.bytes_ if array.dtype.kind in "SO" else array.dtype.type]
        tensor = grpcclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    try:
        named = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
        return client.infer(model, tensors, outputs=named, client_timeout=timeout_s)
    except InferenceServerException as e:
        return e


def request_counters(metrics_port: int, model: str) -> dict[str, float]:
    """Triton's request counters for ``model`` from the metrics endpoint (Prometheus text; summed over reasons)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out = {"nv_inference_request_success": 0.0, "nv_inference_request_failure": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in out and f'model="{model}"' in line:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def counted_since(metrics_port: int, model: str, before: dict[str, float], want: dict[str, float]) -> dict[str, float]:
    """The change in ``model``'s request counters since ``before``, once it equals ``want`` (or after 10 s, as it
    is): Triton counts a request when it releases it, just after the response."""
    deadline = time.monotonic() + 10
    while True:
        after = request_counters(metrics_port, model)
        counted = {k: after[k] - before[k] for k in after}
        if counted == want or time.monotonic() > deadline:
            return counted
        time.sleep(0.1)
