"""``mmgen-edge perceive``, ``generate`` and ``stream``: the SDK on images, samples and video (base install)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmgen_edge.cli import (
    backend_name, guidance_scale, nonnegative_int, positive_int, sample_count, seed_value, step_count, video_fps,
)
from mmgen_edge.runtime.modalities import CONDITION_TASKS

def _write_rgb(path: Path, image: np.ndarray) -> None:
    from mmgen_edge.sdk.images import write_image

    write_image(path, image)


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


def output_stems(paths: list[str]) -> list[str]:
    """One output name per input: the file's stem, or ``stem_2``, ``stem_3`` … where stems repeat
    (``a/x.png b/x.png``), so no result overwrites another."""
    seen: dict[str, int] = {}
    taken = {Path(p).stem for p in paths}
    stems = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            n = seen[stem]
            while f"{stem}_{n}" in taken:
                n += 1
            seen[stem] = n
            taken.add(f"{stem}_{n}")
            stem = f"{stem}_{n}"
        stems.append(stem)
    return stems


#: Every map ``_visualise`` can write, ``{stem}_{name}.png``.
VIEW_NAMES = ("rgb", "depth", "normals", "segmentation")


def check_outputs_spare_inputs(inputs: list[str], out: Path, stems: list[str]) -> None:
    """Refuse a run whose outputs would replace one of its inputs (``x.png`` and ``x_depth.png`` with ``--out``
    their folder), before anything is written: the input would be lost and then read back as the wrong image."""
    given = {Path(p).resolve(): p for p in inputs}
    for stem in stems:
        for name in VIEW_NAMES:
            target = (out / f"{stem}_{name}.png").resolve()
            if target in given:
                raise ValueError(f"--out {out}: the output {target.name} would overwrite the input {given[target]}; "
                                 "choose another --out")  # fmt: skip


def cmd_perceive(args: argparse.Namespace) -> int:
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    out = Path(args.out)
    summary = []
    stems = output_stems(args.images)
    check_outputs_spare_inputs(args.images, out, stems)
    from mmgen_edge.sdk.images import load_image

    for path in args.images:  # every input decoded once before the model loads or any output is written (a
        load_image(path)  # truncated PNG / TIFF is found only by decoding it)
    with _open_model(args) as model:
        for path, stem in tqdm(list(zip(args.images, stems)), desc="perceive", unit="image",
                               disable=args.json or not sys.stderr.isatty()):  # fmt: skip
            result = model.perceive(path, tasks=tasks, steps=args.steps, seed=args.seed)
            written = _write_views(result, out, stem)
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
    from mmgen_edge.sdk.protocol import MAX_SEED

    if (args.condition is None) != (args.condition_image is None):
        raise ValueError("--condition and --condition-image go together")
    if args.seed + args.num - 1 > MAX_SEED:  # before any sample is written
        raise ValueError(f"--seed {args.seed} with --num {args.num} needs seeds up to {args.seed + args.num - 1}, "
                         f"above the largest seed {MAX_SEED}")  # fmt: skip
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


#: Title of the ``stream --show`` window.
WINDOW_TITLE = "mmgen-edge"
#: Containers ``write_video`` (OpenCV, ``mp4v``) writes and reads back; WebM needs another codec.
STREAM_OUT_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".mpg")


def check_video_output(out: str, sources: list[str]) -> None:
    """``stream --out``: a video file name (by extension) that is none of the sources, checked before streaming."""
    target = Path(out)
    if target.is_dir():
        raise ValueError(f"--out {out} is a folder: give a video file name ({', '.join(STREAM_OUT_EXTENSIONS)})")
    if target.suffix.lower() not in STREAM_OUT_EXTENSIONS:
        raise ValueError(f"--out {out}: give a video file name ({', '.join(STREAM_OUT_EXTENSIONS)})")
    for source in sources:
        if Path(source).exists() and Path(source).resolve() == target.resolve():
            raise ValueError(f"--out {out} is the source video {source}: writing it would destroy the input")


def check_window_support() -> None:
    """``stream --show``: OpenCV can open a window here, checked before the model loads (the base install's
    ``opencv-python-headless`` has no GUI, and a GUI build without a display fails at the first frame otherwise)."""
    import cv2

    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "")  # fmt: skip
    if gui.upper() == "NONE":
        raise ValueError(
            "--show needs an OpenCV build with a GUI, and this one has none (opencv-python-headless): "
            "pip uninstall opencv-python-headless && pip install opencv-python, or write a video with --out"
        )
    try:
        cv2.namedWindow(WINDOW_TITLE)
    except cv2.error as e:
        detail = " ".join(str(e).split())[:160]
        raise RuntimeError(f"--show cannot open a window here (no display?): {detail}; write a video with --out") from None


def cmd_stream(args: argparse.Namespace) -> int:
    """Perceive the sources; with ``--out`` each tile is written as it comes (memory stays flat however long)."""
    from mmgen_edge.sdk.stream import fit_video_frames, write_video

    sources: list[object] = [int(s) if s.isascii() and s.isdigit() else s for s in args.sources]
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if args.out:
        check_video_output(args.out, [s for s in sources if isinstance(s, str)])
    if args.show:
        check_window_support()
    latencies: list[float] = []
    with _open_model(args) as model:
        stream = model.stream(sources, tasks=tasks, steps=args.steps, seed=args.seed,
                              realtime=None if args.realtime is None else args.realtime == "on")  # fmt: skip
        with stream:
            bar = tqdm(desc="stream", unit="frame", disable=args.json or not sys.stderr.isatty())
            tiles = _stream_tiles(stream, latencies, bar, args.show, args.max_frames)
            if args.out:
                write_video(fit_video_frames(tiles), args.out, fps=args.fps)
            else:
                for _ in tiles:
                    pass
            bar.close()
            stats = stream.stats
    summary = {
        "frames": len(latencies),
        "captured": stats.captured,
        "processed": stats.processed,
        "dropped": stats.dropped,
        "expected": stats.expected,
        "latency_ms_median": float(np.median(latencies) * 1000) if latencies else None,
        "out": args.out,
        "warnings": stats.warnings,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("  ".join(f"{k}={v}" for k, v in summary.items() if k != "warnings"))
        for warning in stats.warnings:  # also logged when it happened; repeated here next to the counts
            print(f"warning: {warning}")
    return 0


def _stream_tiles(
    stream: Any, latencies: list[float], bar: Any, show: bool, max_frames: int | None
) -> Iterator[np.ndarray]:
    """Input | maps tiles of the stream's frames, one at a time (shown in a window with ``show``; q quits)."""
    if show:
        import cv2
    for item in stream:
        views = _visualise(item.result)
        tile = np.concatenate([item.image, *views.values()], axis=1)  # maps come at the input's size
        latencies.append(item.latency)
        bar.update(1)
        if show:
            cv2.imshow(WINDOW_TITLE, cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
            if cv2.waitKey(1) & 0xFF == ord("q"):
                return
        yield tile
        if max_frames and len(latencies) >= max_frames:
            return


def add_parsers(sub: Any) -> None:
    """Add ``perceive``, ``generate`` and ``stream`` to an ``argparse`` subparsers object."""
    p = sub.add_parser("perceive", help="depth, normals and segmentation of images (writes PNGs, or --json)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    p.add_argument("--server", help="use a served model instead of a bundle (grpc://host:port or http://host:port)")
    p.add_argument("--backend", type=backend_name, default="auto", help="auto, tensorrt, ort-tensorrt, ort-cuda, ort-cpu, openvino, openvino-fp32 or openvino-bf16")
    p.add_argument("--tasks", default="depth,normals,segmentation", help="comma-separated subset")
    p.add_argument("--steps", type=step_count, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--out", default="out/perceive", help="output directory for the PNGs")
    p.add_argument("--json", action="store_true", help="print a JSON summary (paths, timings, statistics)")
    p.set_defaults(func=cmd_perceive)

    p = sub.add_parser("generate", help="class-conditioned or map-conditioned generation (writes PNGs)")
    p.add_argument("--bundle", help="bundle directory (default: the demo model's)")
    p.add_argument("--server", help="use a served model instead of a bundle (grpc://host:port or http://host:port)")
    p.add_argument("--backend", type=backend_name, default="auto")
    p.add_argument("--class-label", type=nonnegative_int, help="class label (default: unconditional)")
    p.add_argument("--condition", choices=CONDITION_TASKS, help="kind of --condition-image")
    p.add_argument("--condition-image", help="encoded condition image (grey disparity, RGB normals or painted segments)")
    p.add_argument("--cfg-scale", type=guidance_scale,
                   help="classifier-free guidance on the class label, 0..100 (1 = none; default: the bundle's)")
    p.add_argument("--steps", type=step_count)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--num", type=sample_count, default=1, help="samples to generate (seeds seed..seed+num-1)")
    p.add_argument("--out", default="out/generate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("stream", help="perceive a camera, video file, URL (or several) into a video file or a window")
    p.add_argument("sources", nargs="+", help="camera index (0), video file or rtsp:// / http:// URL")
    p.add_argument("--bundle")
    p.add_argument("--server", help="use a served model instead of a bundle (grpc://host:port or http://host:port)")
    p.add_argument("--backend", type=backend_name, default="auto")
    p.add_argument("--tasks", default="depth,normals,segmentation")
    p.add_argument("--steps", type=step_count)
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--realtime", choices=["on", "off"], help="latest-frame policy (default: on for cameras/URLs, off for files)")
    p.add_argument("--out", help="write an .mp4 of input | maps side by side")
    p.add_argument("--fps", type=video_fps, default=15.0, help="frame rate of --out")
    p.add_argument("--show", action="store_true", help="show a window (q quits); needs a GUI build of OpenCV")
    p.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stream)
