"""``mmgen-edge calibrate``: an FP32 bundle -> an INT8 bundle (TensorRT Q/DQ or CPU integer ops), behind an accuracy gate.

    mmgen-edge calibrate BUNDLE --data SRC --out BUNDLE_INT8 [--target tensorrt|cpu] [--method minmax|entropy|percentile]
        [--samples N] [--max-drop depth=0.01,normal=1.0,miou=0.02] [--force] [--eval-scenes N] [--json]

``mmgen_edge/cli.py`` wires it in with ``add_parsers(subparsers)``; the parser's ``func`` is :func:`cmd_calibrate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mmgen_edge.cli import nonnegative_int, positive_int, scene_count, step_count, step_list, thread_count

#: Exit status when the gate refused the INT8 bundle (2 is the CLI's usage / input error status).
EXIT_GATE_REFUSED = 3


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    from .capture import DEFAULT_STEPS
    from .cpu_target import DEFAULT_CPU_SCHEME, CpuScheme, Target
    from .quantize import DEFAULT_EXCLUDE, SENSITIVE_GROUPS, Method
    from .calibrate import DEFAULT_EVAL_SCENES, DEFAULT_SAMPLES
    from .measures import DEFAULT_SPEED_RUNS

    p = subparsers.add_parser(
        "calibrate",
        help="INT8-quantize a bundle's denoiser (explicit Q/DQ for TensorRT) with an accuracy gate",
        description="Run the FP32 bundle on calibration images at every step of several schedules, quantize "
        "denoiser_cached to symmetric INT8 Q/DQ (TensorRT-buildable), compare INT8 with FP32 on held-out shapes "
        "scenes, and write the INT8 bundle only when no metric dropped beyond --max-drop (or with --force).",
    )
    p.add_argument("bundle", help="the FP32 bundle to calibrate")
    p.add_argument("--data", required=True, help="calibration images: an image folder, a video file, or demo:N")
    p.add_argument("--out", required=True, help="the INT8 bundle to write (atomically)")
    p.add_argument("--method", choices=[m.value for m in Method], default=Method.MINMAX.value,
                   help="how activation ranges are chosen (default: minmax)")
    p.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES, help=f"calibration images (default {DEFAULT_SAMPLES})")
    p.add_argument("--steps", type=step_list, default=",".join(map(str, DEFAULT_STEPS)),
                   help="schedules run on every image, comma-separated step counts (default 1,2,4)")  # fmt: skip
    p.add_argument("--max-drop", default="", metavar="depth=0.01,normal=1.0,miou=0.02",
                   help="gate: largest allowed delta1 drop, normal-error rise (deg), mIoU drop; object_depth, "
                        "object_normal, object_miou: the same on the object pixels (defaults 0.01, 1.0, 0.02)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="write the bundle even when the gate fails")
    p.add_argument("--eval-scenes", type=scene_count, default=DEFAULT_EVAL_SCENES,
                   help=f"held-out scenes scored by the gate (default {DEFAULT_EVAL_SCENES})")  # fmt: skip
    p.add_argument("--eval-steps", type=step_count, help="sampler steps of the evaluation (default: the manifest's)")
    p.add_argument("--target", choices=[t.value for t in Target], default=Target.TENSORRT.value,
                   help="tensorrt: symmetric INT8 Q/DQ that TensorRT builds (default); cpu: uint8 x int8 integer "
                   "operators that ONNX Runtime runs fast on the CPU")  # fmt: skip
    p.add_argument("--cpu-scheme", choices=[s.value for s in CpuScheme], default=DEFAULT_CPU_SCHEME.value,
                   help="--target cpu: dynamic (MatMulInteger, per-call activation ranges) or static (QLinearMatMul, "
                   "calibrated ranges) (default: %(default)s)")  # fmt: skip
    p.add_argument("--exclude", default=None,
                   help=f"node groups kept in float, from {list(SENSITIVE_GROUPS)}, or 'none' (default: "
                   f"{','.join(DEFAULT_EXCLUDE)} for tensorrt; measured per group for cpu)")  # fmt: skip
    p.add_argument("--vae-encoder", action="store_true", help="also quantize the VAE encoder")
    p.add_argument("--vae-decoder", action="store_true", help="also quantize the VAE decoder")
    p.add_argument("--cache-dir", help="keep activation ranges here (keyed by weights, graph and calibration-set hash)")
    p.add_argument("--work-dir", help="keep captured feeds and intermediate graphs here (default: a temporary folder)")
    p.add_argument("--threads", type=thread_count, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--compare-exclusions", action="store_true",
                   help="also report the latent error of the denoiser quantized without the float exclusions")  # fmt: skip
    p.add_argument("--speed-runs", type=nonnegative_int, default=DEFAULT_SPEED_RUNS, help="timed runs of one step (0: skip)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_calibrate)
    return p


def parse_exclude(text: str) -> tuple[str, ...]:
    from .quantize import SENSITIVE_GROUPS

    if text.strip().lower() == "none":
        return ()
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = [g for g in groups if g not in SENSITIVE_GROUPS]
    if unknown:
        raise ValueError(f"--exclude: unknown groups {unknown}; choose from {list(SENSITIVE_GROUPS)} or 'none'")
    return groups


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run :func:`~mmgen_edge.calibration.calibrate.calibrate_bundle` from parsed arguments; print the report."""
    from .calibrate import calibrate_bundle
    from .gate import CalibrationGateError, GateThresholds

    interactive = not args.json and (args.progress or sys.stderr.isatty())
    try:
        report = calibrate_bundle(
            args.bundle,
            args.data,
            args.out,
            method=args.method,
            max_drop=GateThresholds.parse(args.max_drop),
            force=args.force,
            num_samples=args.samples,
            steps=args.steps,
            eval_scenes=args.eval_scenes,
            eval_steps=args.eval_steps,
            exclude=None if args.exclude is None else parse_exclude(args.exclude),
            quantize_vae=tuple(g for g, on in (("vae_encoder", args.vae_encoder), ("vae_decoder", args.vae_decoder)) if on),
            cache_dir=args.cache_dir,
            work_dir=args.work_dir,
            overwrite=args.overwrite,
            speed_runs=args.speed_runs,
            compare_exclusions=args.compare_exclusions,
            threads=args.threads,
            progress=interactive,
            log=None if args.json else (lambda message: print(message, file=sys.stderr, flush=True)),
            target=args.target,
            cpu_scheme=args.cpu_scheme,
        )
    except CalibrationGateError as e:
        _print_report(e.report.to_dict(), e.report.summary_lines(), args.json)
        print(f"mmgen-edge calibrate: {e}", file=sys.stderr)
        return EXIT_GATE_REFUSED
    _print_report(report.to_dict(), report.summary_lines() + [f"written      {args.out}"], args.json)
    return 0


def _print_report(payload: dict[str, Any], lines: list[str], as_json: bool) -> None:
    print(json.dumps(payload, indent=2) if as_json else "\n".join(lines))
