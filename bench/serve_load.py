"""Load on a served bundle: requests/s and latency percentiles at several numbers of concurrent camera streams.

    python -m mmgen_edge.bench.serve_load [--bundle DIR] [--streams 1,4,8] [--requests 24] [--instances 1] [--front-instances N]
        [--tasks depth,normals,segmentation] [--max-queue-delay-us 2000] [--threads N] [--out out/bench]

Starts ``mmgen-edge serve`` for the bundle in a child process (so server and clients are separate processes, as
in deployment; on one small machine they still share the cores), then, for each stream count S, runs S client
threads, each its own ``mmgen_edge.connect`` (gRPC) sending ``--requests`` perceive calls back to back (one camera
frame each, 640x480). Reports per S: requests/s, p50/p90 latency (client-measured, pre/post-processing included)
and the speed-up over one stream, plus, measured in the same run, the local SDK's single-stream rate on the same
frames (served / local is the cost of serving at S = 1). Prints a table; writes serve_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mmgen_edge.cli import nonnegative_int, positive_int
from mmgen_edge.runtime.fileio import write_text_atomic
from mmgen_edge.serve.cli import front_count

FRAME_SHAPE = (480, 640, 3)
JSON_FILE = "serve_load.json"


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(count)]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_level(url: str, streams: int, requests: int, tasks: tuple[str, ...]) -> dict[str, float]:
    """S concurrent streams, each ``requests`` back-to-back perceive calls; latency per call, rate overall."""
    from mmgen_edge.sdk.remote import connect

    models = [connect(url, timeout=120, connect_timeout=120) for _ in range(streams)]  # the server may still be starting
    frames = _frames(requests, seed=streams)
    try:
        models[0].perceive(frames[0], tasks=tasks, seed=0)  # warm-up (first request loads lazily)

        def stream(i: int) -> list[float]:
            latencies = []
            for j, frame in enumerate(frames):
                start = time.perf_counter()
                models[i].perceive(frame, tasks=tasks, seed=j)
                latencies.append(time.perf_counter() - start)
            return latencies

        start = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            latencies = [x for f in [pool.submit(stream, i) for i in range(streams)] for x in f.result()]
        elapsed = time.perf_counter() - start
    finally:
        for model in models:
            model.close()
    return {
        "streams": streams,
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p90_ms": _percentile(latencies, 90) * 1000,
    }


def local_rate(bundle: str | None, requests: int, tasks: tuple[str, ...], threads: int | None) -> float:
    import mmgen_edge

    frames = _frames(requests, seed=99)
    with mmgen_edge.load(bundle, backend="auto", threads=threads) as model:
        model.perceive(frames[0], tasks=tasks, seed=0)
        start = time.perf_counter()
        for j, frame in enumerate(frames):
            model.perceive(frame, tasks=tasks, seed=j)
        return requests / (time.perf_counter() - start)


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    from mmgen_edge.serve.server import free_ports

    http, grpc, metrics = free_ports(3)
    cmd = [sys.executable, "-m", "mmgen_edge.cli", "serve", "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics), "--instances", str(args.instances),
           "--max-queue-delay-us", str(args.max_queue_delay_us)]  # fmt: skip
    if args.front_instances:
        cmd += ["--front-instances", str(args.front_instances)]
    if args.bundle:
        cmd.insert(4, args.bundle)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    with open(log, "wb") as f:
        process = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"grpc://127.0.0.1:{grpc}"


def stop_server(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM the server started by :func:`start_server` (it finishes in-flight work); SIGKILL its session after ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    parser.add_argument("--streams", default="1,4,8", help="comma-separated concurrent stream counts")
    parser.add_argument("--requests", type=positive_int, default=24, help="perceive calls per stream and level")
    parser.add_argument("--instances", type=positive_int, default=1)
    parser.add_argument("--max-queue-delay-us", type=nonnegative_int, default=2000)
    parser.add_argument("--front-instances", type=front_count,
                        help="requests in flight per served model (serve --front-instances; default: serve's)")
    parser.add_argument("--threads", type=positive_int, help="ONNX Runtime threads (server instances and the local baseline)")
    parser.add_argument("--tasks", default="depth,normals,segmentation")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args(argv)
    levels = [int(s) for s in args.streams.split(",")]
    tasks = tuple(t for t in args.tasks.split(",") if t)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "serve_load.server.log"

    local = local_rate(args.bundle, args.requests, tasks, args.threads)
    process, url = start_server(args, log)
    try:
        rows = [run_level(url, s, args.requests, tasks) for s in levels]
    finally:
        stop_server(process)
    marker = "engine batches of size: "
    batches = [json.loads(line.split(marker, 1)[1]) for line in log.read_text().splitlines() if marker in line]
    base = rows[0]["requests_per_s"]
    for row in rows:
        row["speedup_over_first"] = row["requests_per_s"] / base
    report = {
        "bundle": args.bundle or "demo",
        "frame": list(FRAME_SHAPE),
        "tasks": list(tasks),
        "instances": args.instances,
        "front_instances": args.front_instances,
        "max_queue_delay_us": args.max_queue_delay_us,
        "cpu_count": os.cpu_count(),
        "local_requests_per_s": local,
        "served_over_local_at_first_level": base / local,
        "levels": rows,
        "server_engine_batches": batches,  # per instance, over all levels: batch size -> count
    }
    write_text_atomic(args.out / JSON_FILE, json.dumps(report, indent=2) + "\n")
    print(f"local SDK, 1 stream: {local:.1f} req/s; served/local at {levels[0]} stream(s): {base / local:.2f}")
    print("| streams | req/s | p50 ms | p90 ms | x first |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['speedup_over_first']:.2f} |")
    print(f"engine batch size -> count (server, all levels, per instance): {batches}")
    print(f"written to {args.out / JSON_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
