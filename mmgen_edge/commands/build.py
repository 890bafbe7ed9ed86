"""``mmgen-edge build``: TensorRT engines for a bundle's runtime graphs on this GPU (tensorrt extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

def cmd_build(args: argparse.Namespace) -> int:
    from mmgen_edge.export.engines import build_bundle_engines
    from mmgen_edge.runtime.backend import RUNTIME_GRAPHS
    from mmgen_edge.runtime.manifest import read_manifest

    manifest = read_manifest(args.bundle, verify="size")
    target = (manifest.calibration or {}).get("target")
    if target == "cpu":
        raise ValueError(
            f"{args.bundle} was calibrated for the CPU (calibrate --target cpu: ONNX Runtime's integer operators, which "
            "TensorRT does not build); calibrate the FP32 bundle with --target tensorrt for engines"
        )
    fallback = "fp16" if args.fp16 else "fp32"
    by_precision: dict[str, list[str]] = {}
    for name in RUNTIME_GRAPHS:  # Q/DQ graphs build as int8 with --int8; the others at --fp16 or fp32
        quantized = manifest.graphs[name].precision.value == "int8"
        if quantized and not args.int8:
            raise ValueError(f"{name} is an INT8 (Q/DQ) graph: pass --int8 to build it")
        by_precision.setdefault("int8" if quantized else fallback, []).append(name)
    if args.int8 and "int8" not in by_precision:
        raise ValueError(f"--int8 needs a calibrated bundle (mmgen-edge calibrate); {args.bundle} has no Q/DQ graph")
    entries = []
    for precision, graphs in by_precision.items():
        entries += build_bundle_engines(
            Path(args.bundle), precision, graphs=tuple(graphs),
            timing_cache=Path(args.timing_cache) if args.timing_cache else None, rebuild=args.rebuild,
            progress=not args.json,
        )  # fmt: skip
    rows = [{"graph": e.graph, "file": e.file, "precision": e.precision.value, "layers": e.layer_precisions} for e in entries]
    print(json.dumps(rows, indent=2) if args.json else "\n".join(f"{r['graph']}: {r['file']} {r['layers']}" for r in rows))
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``build`` to an ``argparse`` subparsers object."""
    p = sub.add_parser(
        "build",
        help="build TensorRT engines for a bundle on this GPU (recorded in its manifest)",
        description="Build one engine per runtime graph with an optimisation profile for the bundle's batch ranges "
        "and a timing cache; engines are keyed by GPU, compute capability and TensorRT version in the manifest.",
    )
    p.add_argument("bundle")
    p.add_argument("--fp16", action="store_true", help="fp16 engines (fp16 bundles are built strongly typed)")
    p.add_argument("--int8", action="store_true", help="build the calibrated Q/DQ graphs as INT8")
    p.add_argument("--timing-cache", help="timing cache file, reused across builds")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when matching engines exist")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)
