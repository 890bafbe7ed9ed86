"""``mmgen-edge serve`` and ``mmgen-edge triton-repo``.

    mmgen-edge serve [BUNDLE] [--host 127.0.0.1] [--http] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
        [--backend auto] [--instances 1] [--front-instances N] [--max-queue-delay-us 2000] [--max-queue-size 256]
        [--threads N] [--steps K] [--access-token TOKEN]
    mmgen-edge triton-repo BUNDLE --out REPO [--instances 1] [--front-instances N] [--max-queue-delay-us 2000]
        [--engines auto|none|require]

``mmgen_edge/cli.py`` wires them in with ``add_parsers(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from mmgen_edge.cli import backend_name, bounded_int, port, step_count, thread_count

from .batcher import DEFAULT_FRONT_INSTANCES


#: Model copies per model (each holds the bundle's sessions), batcher delay (Triton's field is a uint64; a batch
#: waits at most 10 s) and queue size: bounds a typo cannot get past.
MAX_INSTANCES, MAX_QUEUE_DELAY_US, MAX_QUEUE_SIZE = 64, 10_000_000, 1_000_000
instance_count = bounded_int(1, MAX_INSTANCES)
#: Front instances per model: each is a Python stub process that tritonserver unloads one by one at stop (~2 s each),
#: and Triton gives up stopping after 30 s.
MAX_FRONT_INSTANCES = 16
front_count = bounded_int(1, MAX_FRONT_INSTANCES)
queue_delay_us = bounded_int(0, MAX_QUEUE_DELAY_US)
queue_size = bounded_int(1, MAX_QUEUE_SIZE)

def cmd_serve(args: argparse.Namespace) -> int:
    from mmgen_edge.sdk.api import default_bundle

    from .server import ACCESS_TOKEN_ENV, Server, ServerOptions, exposure_warning, serve

    options = ServerOptions(
        host=args.host, http=args.http, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        backend=args.backend, instances=args.instances, front_instances=args.front_instances,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size, threads=args.threads, steps=args.steps,
        access_token=args.access_token or os.environ.get(ACCESS_TOKEN_ENV) or None,
    )  # fmt: skip
    options.check()
    bundle = args.bundle or default_bundle()
    logging.basicConfig(level=logging.INFO, format="mmgen-edge serve: %(message)s")

    def ready(server: Server) -> None:
        backend = server.handlers[0].model.backend
        urls = server.bind_urls()
        banner = (
            f"mmgen-edge serve: {bundle} ({backend}, {options.instances} instance(s), {server.front_instances} requests "
            f"at once per model) ready at {urls['grpc']} (gRPC)"
            + (f" and {urls['http']} (HTTP)" if "http" in urls else "")
            + f", metrics at {urls['metrics']}; Ctrl-C or SIGTERM stops"
        )
        lines = [banner]
        if exposure_warning(options.host):
            lines.append(
                f"mmgen-edge serve: WARNING: listening on {options.host}, unauthenticated; clients on this machine "
                f"connect to {server.grpc_url}"
            )
        token = "the one given" if options.access_token else f"a random one (choose it with --access-token or {ACCESS_TOKEN_ENV})"
        lines.append(f"mmgen-edge serve: Triton's admin endpoints need header triton-access-token: {token}")
        print("\n".join(lines), file=sys.stderr, flush=True)

    serve(bundle, options, on_ready=ready)
    print("mmgen-edge serve: stopped", file=sys.stderr)
    return 0


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from .triton_repo import write_model_repository

    out = write_model_repository(
        args.bundle, args.out, max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
        front_instances=args.front_instances, engines=args.engines,
    )  # fmt: skip
    models = sorted(p.name for p in out.iterdir() if p.is_dir())
    if args.json:
        print(json.dumps({"repository": str(out), "models": models}, indent=2))
    else:
        print(f"wrote a Triton model repository with {len(models)} models to {out}: {', '.join(models)}")
        print(f"serve it with: tritonserver --model-repository {out}  (mmgen-edge must be installed for the Python backend)")
    return 0


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a bundle through Triton Inference Server (PyTriton; dynamic batching across clients)",
        description="Start Triton (via nvidia-pytriton) with the mmgen_info / mmgen_perceive / mmgen_generate models "
        "bound to this bundle; clients use mmgen_edge.connect(URL). Loopback only unless --host says otherwise.",
    )
    p.add_argument("bundle", nargs="?", help="bundle directory (default: the demo model's)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1). Inference is unauthenticated: any other address exposes it "
        "(a warning says so); put an authenticating proxy in front to expose it",
    )
    p.add_argument(
        "--http",
        action="store_true",
        help="serve Triton's HTTP/REST front end too, on --http-port (off by default: in the bundled Triton a "
        "malformed HTTP request can stop the server; gRPC refuses it). Trusted clients or a bounding proxy only",
    )
    p.add_argument("--http-port", type=port, default=8000, help="port of the HTTP front end (with --http)")
    p.add_argument("--grpc-port", type=port, default=8001)
    p.add_argument("--metrics-port", type=port, default=8002)
    p.add_argument("--backend", type=backend_name, default="auto", help="auto, tensorrt, ort-tensorrt, ort-cuda, ort-cpu, openvino, openvino-fp32 or openvino-bf16")
    p.add_argument("--instances", type=instance_count, default=1, help=f"model copies serving batches concurrently (default: 1, at most {MAX_INSTANCES})")
    p.add_argument(
        "--front-instances",
        type=front_count,
        help="requests each of mmgen_perceive / mmgen_generate takes in at once, each checked alone and then merged "
        "into engine batches, so an engine batch holds at most this many (Triton instances: a ~24 MB Python process "
        f"each; default: the bundle's max batch x --instances, at most {DEFAULT_FRONT_INSTANCES}; at most "
        f"{MAX_FRONT_INSTANCES})",
    )
    p.add_argument("--max-queue-delay-us", type=queue_delay_us, default=2000, help=f"how long the batcher waits to fill a batch (at most {MAX_QUEUE_DELAY_US} us)")
    p.add_argument("--max-queue-size", type=queue_size, default=256, help=f"requests waiting per model; more are refused (default: 256, at most {MAX_QUEUE_SIZE})")
    p.add_argument("--threads", type=thread_count, help="ONNX Runtime CPU threads per instance")
    p.add_argument("--steps", type=step_count, help="default sampler steps (default: the bundle's)")
    p.add_argument(
        "--access-token",
        help="token for Triton's admin endpoints (model repository, shared memory, trace, logging), sent as header "
        "triton-access-token (default: $MMGEN_EDGE_ACCESS_TOKEN, else a random one); inference, health, metadata and "
        "statistics (perf_analyzer) need none",
    )
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "triton-repo",
        help="write a Triton model repository (ONNX Runtime / TensorRT graphs + Python BLS entry models)",
        description="Write REPO for tritonserver: the VAE encoder/decoder, conditioning and denoiser as ONNX Runtime "
        "(or TensorRT, where the bundle has engines) models, and mmgen_perceive / mmgen_generate / mmgen_info as "
        "Python-backend models running the denoising loop over them (same wire protocol as mmgen-edge serve).",
    )
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="repository directory to write (must not exist or be empty)")
    p.add_argument("--instances", type=instance_count, default=1, help=f"instances per model (default: 1, at most {MAX_INSTANCES})")
    p.add_argument(
        "--front-instances",
        type=front_count,
        help="instances of mmgen_perceive / mmgen_generate, which check each request alone and pass it on to the "
        f"batched models (default: the bundle's max batch x --instances, at most {DEFAULT_FRONT_INSTANCES}; at most "
        f"{MAX_FRONT_INSTANCES})",
    )
    p.add_argument("--max-queue-delay-us", type=queue_delay_us, default=2000, help=f"at most {MAX_QUEUE_DELAY_US} us")
    p.add_argument("--engines", choices=["auto", "none", "require"], default="auto", help="use the bundle's TensorRT engines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_triton_repo)
