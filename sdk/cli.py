"""The ``mmgen-edge`` command line. Each subcommand imports what it needs when it runs (the base install has no torch)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mmgen_edge import __version__
from mmgen_edge.runtime.modalities import CONDITION_TASKS

EXPORT_EXTRA_HINT = "this command needs the export extra: pip install 'mmgen-edge[export]' (and torch first)"


def _require_export() -> None:
    """Exit with an install hint when the export extra is missing (checked without importing torch)."""
    missing = [name for name in ("torch", "onnx", "diffusers", "safetensors") if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"mmgen-edge: {EXPORT_EXTRA_HINT} (missing: {', '.join(missing)})")


def cmd_convert(args: argparse.Namespace) -> int:
    _require_export()
    from mmgen_edge.export.checkpoint import convert_checkpoint

    summary = convert_checkpoint(
        args.checkpoint,
        args.out,
        weights=args.weights,
        sha256=args.sha256,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=args.progress or (not args.json and sys.stderr.isatty()),
    )
    if args.json:
        print(
            json.dumps(
                {
                    "out_dir": str(summary.out_dir),
                    "config": summary.config.model_dump(mode="json"),
                    "parameters": summary.parameters,
                    "inference_parameters": summary.inference_parameters,
                    "release": summary.release.name if summary.release else None,
                    "sha256": summary.sha256,
                    "weights": summary.weights.value,
                    "dtype": summary.dtype.value,
                    "bytes_written": summary.bytes_written,
                },
                indent=2,
            )
        )
    else:
        print("\n".join(summary.lines()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _require_export()
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.runtime.sampler import SamplerConfig

    manifest = export_bundle(
        args.model_dir,
        args.vae,
        args.out,
        precision=args.precision,
        max_batch=args.max_batch,
        sampler=SamplerConfig(kind=args.sampler, num_steps=args.steps),
        overwrite=args.overwrite,
        progress=args.progress or (not args.json and sys.stderr.isatty()),
    )
    if args.json:
        print(manifest.model_dump_json(indent=2))
        return 0
    total = sum(f.bytes for f in manifest.files)
    print(f"bundle       {args.out} ({len(manifest.files)} files, {total / 1e6:,.1f} MB, {manifest.precision.value})")
    print(f"model        {manifest.model.name}, {manifest.model.resolution} px, modalities {', '.join(manifest.modalities)}")
    print(f"sampler      {manifest.sampler.kind.value}, {manifest.sampler.num_steps} steps; batch 1..{manifest.max_batch}")
    for name, graph in manifest.graphs.items():
        ins = ", ".join(f"{s.name}{list(s.shape)}" for s in graph.inputs)
        print(f"graph        {name}: {ins}")
    return 0


def _write_rgb(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {path}")


def _visualise(result: object) -> dict[str, np.ndarray]:
    from mmgen_edge.sdk import processors

    views: dict[str, np.ndarray] = {}
    if getattr(result, "rgb", None) is not None:
        views["rgb"] = result.rgb  # type: ignore[attr-defined]
    if getattr(result, "depth", None) is not None:
        views["depth"] = processors.colourise_depth(result.depth)  # type: ignore[attr-defined]
    if getattr(result, "normals", None) is not None:
        views["normals"] = processors.colourise_normals(result.normals)  # type: ignore[attr-defined]
    if getattr(result, "segmentation", None) is not None:
        views["segmentation"] = processors.colourise_segmentation(result.segmentation.labels)  # type: ignore[attr-defined]
    return views


def _write_views(result: object, out: Path, stem: str) -> dict[str, str]:
    """Write every visualised map of ``result`` as ``out/{stem}_{map}.png``; returns the paths by map name."""
    written = {}
    for name, view in _visualise(result).items():
        target = out / f"{stem}_{name}.png"
        _write_rgb(target, view)
        written[name] = str(target)
    return written


def _open_model(args: argparse.Namespace) -> Any:
    """The local bundle, or the served model with --server (same API)."""
    import mmgen_edge

    if getattr(args, "server", None):
        if args.bundle:
            raise ValueError("give --bundle or --server, not both")
        return mmgen_edge.connect(args.server)
    return mmgen_edge.load(args.bundle, backend=args.backend)


def cmd_perceive(args: argparse.Namespace) -> int:
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    out = Path(args.out)
    summary = []
    with _open_model(args) as model:
        for path in tqdm(args.images, desc="perceive", unit="image", disable=args.json or not sys.stderr.isatty()):
            result = model.perceive(path, tasks=tasks, steps=args.steps, seed=args.seed)
            written = _write_views(result, out, Path(path).stem)
            entry = {"image": str(path), "outputs": written, "timings": result.timings, "backend": result.backend}
            if result.segmentation is not None:
                entry["segments"] = result.segmentation.num_segments
            summary.append(entry)
            if not args.json:
                total = sum(result.timings.values())
                print(f"{path}: {', '.join(written)} in {total * 1000:.0f} ms ({result.backend}) -> {out}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from mmgen_edge.sdk.images import load_image

    if (args.condition is None) != (args.condition_image is None):
        raise ValueError("--condition and --condition-image go together")
    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    condition = {args.condition: load_image(args.condition_image, "--condition-image")} if args.condition else None
    out = Path(args.out)
    summary = []
    with _open_model(args) as model:
        for i in range(args.num):
            seed = args.seed + i
            result = model.generate(
                class_label=args.class_label, condition=condition, cfg_scale=args.cfg_scale, steps=args.steps, seed=seed
            )
            written = _write_views(result, out, f"sample{seed:04d}")
            summary.append({"seed": seed, "outputs": written, "timings": result.timings})
            if not args.json:
                print(f"seed {seed}: {', '.join(written)} -> {out}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from mmgen_edge.sdk.stream import write_video

    sources: list[object] = [int(s) if s.isdigit() else s for s in args.sources]
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    shown = args.show
    if shown:
        import cv2
    frames: list[np.ndarray] = []
    latencies: list[float] = []
    with _open_model(args) as model:
        stream = model.stream(sources, tasks=tasks, steps=args.steps, seed=args.seed,
                              realtime=None if args.realtime is None else args.realtime == "on")  # fmt: skip
        with stream:
            bar = tqdm(desc="stream", unit="frame", disable=args.json or not sys.stderr.isatty())
            for item in stream:
                views = _visualise(item.result)
                tile = np.concatenate([item.image, *views.values()], axis=1)  # maps come at the input's size
                latencies.append(item.latency)
                bar.update(1)
                if args.out:
                    frames.append(tile)
                if shown:
                    cv2.imshow("mmgen-edge", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
                    if cv2.waitKey(1) & 0xFF == ord("q"):
                        break
                if args.max_frames and len(latencies) >= args.max_frames:
                    break
            bar.close()
            stats = stream.stats
    if args.out:
        write_video(frames, args.out, fps=args.fps)
    summary = {
        "frames": len(latencies),
        "captured": stats.captured,
        "processed": stats.processed,
        "dropped": stats.dropped,
        "latency_ms_median": float(np.median(latencies) * 1000) if latencies else None,
        "out": args.out,
    }
    print(json.dumps(summary, indent=2) if args.json else "  ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import mmgen_edge
    from mmgen_edge.samples.shapes.evaluate import run_evaluation
    from mmgen_edge.sdk.demo import ensure_demo_bundle

    steps = [int(k) for k in args.steps.split(",") if k.strip()]
    if not steps or min(steps) < 1:
        raise ValueError(f"--steps must be a comma-separated list of positive integers, got {args.steps!r}")
    bundle = args.bundle or ensure_demo_bundle()
    with mmgen_edge.load(bundle, backend=args.backend) as model:
        report = run_evaluation(model, args.out, num_scenes=args.scenes, steps=steps,
                                generation_per_class=args.generation, progress=not args.json and sys.stderr.isatty())  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((Path(args.out) / "report.md").read_text(), end="")
    return 0


def run_bench(argv: Sequence[str]) -> int:
    _require_export()  # the torch eager baseline needs torch
    from mmgen_edge.bench.run import main as bench_main

    return int(bench_main(list(argv)) or 0)


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
        "torch_installed": importlib.util.find_spec("torch") is not None,
    }
    bundle = Path(args.bundle) if args.bundle else default_bundle()
    try:
        manifest = read_manifest(bundle, verify="size")
    except (FileNotFoundError, ValueError) as e:
        report["bundle"] = {"path": str(bundle), "problem": str(e)}
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
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    print(f"bundle.{k:<14} {v}")
            else:
                print(f"{key:<21} {value}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from mmgen_edge.export.engines import build_bundle_engines
    from mmgen_edge.runtime.backend import RUNTIME_GRAPHS
    from mmgen_edge.runtime.manifest import read_manifest

    manifest = read_manifest(args.bundle, verify="size")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from mmgen_edge.sdk.demo import run_demo

    report = run_demo(args.out, steps=args.steps, seed=args.seed, bundle=args.bundle)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((Path(args.out) / "report.md").read_text(), end="")
        print(f"written to {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgen-edge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmgen-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "convert",
        help="import a release (or release-layout) training checkpoint into a model directory",
        description="Import 0600000.pt / 0620000.pt (or any checkpoint of that layout) into MODEL_DIR: "
        "config.json + model.safetensors. Loading never runs pickled code; the file is memory-mapped.",
    )
    p.add_argument("checkpoint", help="the .pt training checkpoint (model / ema / opt / args / steps)")
    p.add_argument("--out", required=True, help="model directory to write (written atomically)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights to import (default: ema)")
    p.add_argument(
        "--sha256",
        default="auto",
        metavar="auto|HEX|skip",
        help="auto: hash and recognise the release files (default); HEX: require this hash; skip: no check",
    )
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="stored precision (default: fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "export",
        help="export a model directory and a VAE into an ONNX bundle (manifest + graphs)",
        description="Trace the denoiser step (sampler update and CFG fused in), the conditioning cache pair and "
        "the VAE encoder/decoder into ONNX with a dynamic batch; write BUNDLE atomically with a hashed manifest.",
    )
    p.add_argument("model_dir", help="model directory (from `mmgen-edge convert` or the demo model)")
    p.add_argument("--vae", required=True, help="diffusers AutoencoderKL directory (e.g. sd-vae-ft-mse)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the graphs/engines serve (default: 8)")
    p.add_argument("--sampler", choices=["euler", "heun", "euler_maruyama"], default="euler", help="default sampler")
    p.add_argument("--steps", type=int, default=4, help="default number of sampler steps (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_export)

    from mmgen_edge.calibration.cli import add_calibrate_parser

    add_calibrate_parser(sub)

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

    p = sub.add_parser("perceive", help="depth, normals and segmentation of images (writes PNGs, or --json)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    p.add_argument("--server", help="use a served model instead of a bundle (grpc://host:port or http://host:port)")
    p.add_argument("--backend", default="auto", help="auto, tensorrt, ort-tensorrt, ort-cuda or ort-cpu")
    p.add_argument("--tasks", default="depth,normals,segmentation", help="comma-separated subset")
    p.add_argument("--steps", type=int, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/perceive", help="output directory for the PNGs")
    p.add_argument("--json", action="store_true", help="print a JSON summary (paths, timings, statistics)")
    p.set_defaults(func=cmd_perceive)

    p = sub.add_parser("generate", help="class-conditioned or map-conditioned generation (writes PNGs)")
    p.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    p.add_argument("--server", help="use a served model instead of a bundle (grpc://host:port or http://host:port)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--class-label", type=int, help="class label (default: unconditional)")
    p.add_argument("--condition", choices=CONDITION_TASKS, help="kind of --condition-image")
    p.add_argument("--condition-image", help="encoded condition image (grey disparity, RGB normals or painted segments)")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=1, help="samples to generate (seeds seed..seed+num-1)")
    p.add_argument("--out", default="out/generate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("stream", help="perceive a camera, video file, URL (or several) into a video file or a window")
    p.add_argument("sources", nargs="+", help="camera index (0), video file or rtsp:// / http:// URL")
    p.add_argument("--bundle")
    p.add_argument("--server", help="use a served model instead of a bundle (grpc://host:port or http://host:port)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--tasks", default="depth,normals,segmentation")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--realtime", choices=["on", "off"], help="latest-frame policy (default: on for cameras/URLs, off for files)")
    p.add_argument("--out", help="write an .mp4 of input | maps side by side")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate of --out")
    p.add_argument("--show", action="store_true", help="show a window (q quits); needs a GUI build of OpenCV")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("eval", help="accuracy on held-out shapes scenes for several step counts (demo model by default)")
    p.add_argument("--bundle", help="bundle to evaluate (default: the demo model's)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes (default: 200)")
    p.add_argument("--steps", default="1,2,4,8,25", help="comma-separated step counts")
    p.add_argument("--generation", type=int, default=2, help="generated samples per class for the grid (0: none)")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    # `mmgen-edge bench ...` is handed whole to the benchmark's own parser (see main()); listed here for --help.
    sub.add_parser("bench", help="benchmarks as ratios in one run (mmgen-edge bench --help)", add_help=False)

    from mmgen_edge.serve.cli import add_serve_parsers

    add_serve_parsers(sub)

    p = sub.add_parser("doctor", help="what this machine offers (backends, GPU, TensorRT) and what a bundle needs")
    p.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled model (no download, no GPU)")
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--bundle", help="bundle to use instead of the demo model's")
    p.add_argument("--steps", type=int, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as e:
        print(f"mmgen-edge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
