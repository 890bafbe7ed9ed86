"""``mmgen-edge convert``: a release (or release-layout) training checkpoint -> a model directory (export extra)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

def cmd_convert(args: argparse.Namespace) -> int:
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


def add_parsers(sub: Any) -> None:
    """Add ``convert`` to an ``argparse`` subparsers object."""
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
