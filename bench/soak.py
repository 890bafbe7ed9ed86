"""A bounded soak: memory growth and lost or reordered frames over a long stream and many served requests.

    python -m mmgen_edge.bench.soak [--bundle DIR] [--frames 600] [--requests 300] [--clients 4] [--out out/bench]

1. Stream: a generated video of ``--frames`` frames through ``model.stream`` (file policy: every frame, in order).
   A lost or reordered frame shows in the frame indices the stream reports (they must be 0, 1, 2, ...). The process's resident memory (VmRSS) is sampled after the first 10% of frames (warm-up) and
   at the end.
2. Serve (needs the ``serve`` extra; skipped without it): ``mmgen-edge serve`` in a child process, ``--clients``
   threads sending ``--requests`` perceive calls in all; every response must come back with all its maps. The
   server's memory is the VmRSS summed over its whole process session (the serve process, tritonserver and the
   Python backend stubs), sampled after the first 10% of requests and at the end.
Prints one line per part and writes ``soak.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mmgen_edge.cli import nonnegative_int, positive_int, step_count
from mmgen_edge.runtime.fileio import write_text_atomic

JSON_FILE = "soak.json"
FRAME_SIZE = (240, 320)  # (height, width) of the soak video's frames
WARMUP_FRACTION = 0.1


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of one process (VmRSS), in bytes; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def session_rss_bytes(session: int) -> int:
    """VmRSS summed over every process of a session (a server and the children it started)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session:
                total += rss_bytes(entry.name)
        except (ProcessLookupError, PermissionError):
            continue
    return total


def write_soak_video(path: Path, frames: int, fps: float = 30.0) -> None:
    """A video whose frame i has a bright bar in column band i % 16 (so consecutive frames differ)."""
    from mmgen_edge.sdk.stream import write_video

    h, w = FRAME_SIZE
    base = np.random.default_rng(0).integers(0, 120, (h, w, 3), dtype=np.uint8)
    band = w // 16

    def frame(i: int) -> np.ndarray:
        out = base.copy()
        out[:, (i % 16) * band : (i % 16 + 1) * band] = 255
        return out

    write_video((frame(i) for i in range(frames)), path, fps)


def soak_stream(bundle: str | None, frames: int, steps: int) -> dict[str, object]:
    import mmgen_edge

    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "soak.mp4"
        write_soak_video(video, frames)
        indices: list[int] = []
        warm_rss = 0
        start = time.perf_counter()
        with mmgen_edge.load(bundle, backend="auto") as model:
            with model.stream([str(video)], steps=steps, seed=0, realtime=False) as stream:
                for item in stream:
                    indices.append(item.frame_index)
                    if len(indices) == max(1, int(frames * WARMUP_FRACTION)):
                        warm_rss = rss_bytes()
                stats = stream.stats
            end_rss = rss_bytes()  # the model still open, as at the warm-up sample
        elapsed = time.perf_counter() - start
    expected = list(range(frames))
    return {
        "frames_expected": frames,
        "frames_received": len(indices),
        "lost": len(set(expected) - set(indices)),
        "reordered": sum(1 for a, b in zip(indices, indices[1:]) if b <= a),
        "dropped_by_policy": stats.dropped,
        "rss_after_warmup_mb": warm_rss / 1e6,
        "rss_end_mb": end_rss / 1e6,
        "rss_growth_mb": (end_rss - warm_rss) / 1e6,
        "frames_per_s": len(indices) / elapsed,
    }


def soak_serve(bundle: str | None, requests: int, clients: int, out: Path) -> dict[str, object]:
    from mmgen_edge.bench.serve_load import start_server, stop_server
    from mmgen_edge.sdk.remote import connect

    server_args = argparse.Namespace(bundle=bundle, instances=1, max_queue_delay_us=2000, threads=None)
    process, url = start_server(server_args, out / "soak.server.log")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8) for _ in range(8)]
    done: list[int] = []
    failed: list[str] = []
    warm_rss = 0
    try:
        models = [connect(url, timeout=120, connect_timeout=120) for _ in range(clients)]  # the server may still be starting

        def client(c: int) -> None:
            nonlocal warm_rss
            for j in range(c, requests, clients):
                try:
                    result = models[c].perceive(frames[j % len(frames)], seed=j)
                    complete = all(x is not None for x in (result.depth, result.normals, result.segmentation))
                    if complete:
                        done.append(j)
                    else:
                        failed.append(f"{j}: incomplete result")
                except Exception as e:  # noqa: BLE001  (a soak counts failures instead of stopping)
                    failed.append(f"{j}: {e}")
                if not warm_rss and len(done) >= max(1, int(requests * WARMUP_FRACTION)):
                    warm_rss = session_rss_bytes(process.pid)

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        elapsed = time.perf_counter() - start
        end_rss = session_rss_bytes(process.pid)
        for model in models:
            model.close()
    finally:
        stop_server(process)
    return {
        "requests": requests,
        "clients": clients,
        "answered": len(done),
        "lost": requests - len(done),
        "failures": failed[:10],
        "server_rss_after_warmup_mb": warm_rss / 1e6,
        "server_rss_end_mb": end_rss / 1e6,
        "server_rss_growth_mb": (end_rss - warm_rss) / 1e6,
        "requests_per_s": len(done) / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    parser.add_argument("--frames", type=positive_int, default=600, help="frames streamed (default: 600)")
    parser.add_argument("--requests", type=nonnegative_int, default=300, help="perceive requests served (default: 300; 0: skip)")
    parser.add_argument("--clients", type=positive_int, default=4, help="concurrent client threads (default: 4)")
    parser.add_argument("--steps", type=step_count, default=1, help="sampler steps per stream frame (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"cpu_count": os.cpu_count(), "stream": soak_stream(args.bundle, args.frames, args.steps)}
    s = report["stream"]
    print(f"stream: {s['frames_received']}/{s['frames_expected']} frames, lost {s['lost']}, reordered {s['reordered']}, "
          f"RSS {s['rss_after_warmup_mb']:.0f} -> {s['rss_end_mb']:.0f} MB ({s['rss_growth_mb']:+.1f} MB), "
          f"{s['frames_per_s']:.1f} frames/s")  # fmt: skip
    if args.requests and importlib.util.find_spec("pytriton") is None:
        report["serve"] = {"skipped": "the serve extra is not installed"}
        print("serve: skipped (the serve extra is not installed)")
    elif args.requests:
        r = report["serve"] = soak_serve(args.bundle, args.requests, args.clients, args.out)
        print(f"serve: {r['answered']}/{r['requests']} answered by {r['clients']} clients, lost {r['lost']}, server RSS "
              f"{r['server_rss_after_warmup_mb']:.0f} -> {r['server_rss_end_mb']:.0f} MB "
              f"({r['server_rss_growth_mb']:+.1f} MB), {r['requests_per_s']:.1f} req/s")  # fmt: skip
    write_text_atomic(args.out / JSON_FILE, json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out / JSON_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
