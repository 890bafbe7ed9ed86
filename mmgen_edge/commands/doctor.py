"""``mmgen-edge doctor``: what this machine offers (backends, GPU, TensorRT) and what a bundle needs (base install)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from mmgen_edge import __version__


def _open_problem(bundle: Path, manifest: object, choice: object) -> str | None:
    """None when every runtime graph of ``bundle`` opens on ``choice``'s backend, else why one does not."""
    from mmgen_edge.runtime.backend import open_runners
    from mmgen_edge.runtime.runner import deactivate_runners

    try:
        runners = open_runners(bundle, manifest, choice)  # type: ignore[arg-type]
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        return str(e)
    deactivate_runners(runners.values())
    return None


def cmd_doctor(args: argparse.Namespace) -> int:
    from mmgen_edge.runtime.backend import choose_backend, detect_environment
    from mmgen_edge.runtime.manifest import read_manifest
    from mmgen_edge.sdk.api import default_bundle

    env = detect_environment()
    report: dict[str, object] = {
        "mmgen_edge": __version__,
        "python": sys.version.split()[0],
        "onnxruntime_providers": list(env.ort_providers),
        "tensorrt": env.tensorrt_version,
        "gpu": env.gpu_name,
        "compute_capability": env.compute_capability,
        "gpu_problem": env.gpu_problem,
        "openvino": env.openvino.describe() if env.openvino else None,
        "torch_installed": importlib.util.find_spec("torch") is not None,
    }
    bundle = Path(args.bundle) if args.bundle else default_bundle()
    problem = None
    try:  # a named bundle is checked as perceive would (every file's hash); the default one by size only
        manifest = read_manifest(bundle, verify="full" if args.bundle else "size")
    except (FileNotFoundError, ValueError) as e:
        problem = str(e)
        report["bundle"] = {"path": str(bundle), "problem": problem}
    else:
        choice = choose_backend(manifest, env, bundle=bundle)
        report["bundle"] = {
            "path": str(bundle),
            "model": manifest.model.name,
            "resolution": manifest.model.resolution,
            "precision": manifest.precision.value,
            "max_batch": manifest.max_batch,
            "engines": [f"{e.graph}: {e.device_name} sm {e.compute_capability}, TensorRT {e.trt_version}" for e in manifest.engines],
            "backend": choice.kind.value,
            "why": choice.reason,
            "rejected": list(choice.rejected),
        }
        if args.bundle:  # a named bundle is also opened on its backend, as load() would: a graph the backend cannot
            problem = _open_problem(bundle, manifest, choice)  # parse is found here, not at the first frame
            report["bundle"]["loads"] = problem is None  # type: ignore[index]
            if problem is not None:
                report["bundle"]["problem"] = problem  # type: ignore[index]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    print(f"bundle.{k:<14} {v}")
            else:
                print(f"{key:<21} {value}")
    return 1 if problem is not None and args.bundle else 0  # a bundle the user named that will not load


def add_parsers(sub: Any) -> None:
    """Add ``doctor`` to an ``argparse`` subparsers object."""
    p = sub.add_parser("doctor", help="what this machine offers (backends, GPU, TensorRT) and what a bundle needs")
    p.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
