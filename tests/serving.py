"""Helpers shared by the serving tests (test_serve.py, test_triton_repo_server.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
