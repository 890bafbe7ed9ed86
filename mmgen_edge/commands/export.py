"""``mmgen-edge export``: a model directory and a VAE -> an ONNX bundle (export extra)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmgen_edge.cli import positive_int, step_count

def cmd_export(args: argparse.Namespace) -> int:
    from mmgen_edge.export.onnx_export import ALL_GRAPHS, DEFAULT_GRAPHS, export_bundle
    from mmgen_edge.runtime.sampler import SamplerConfig

    manifest = export_bundle(
        args.model_dir,
        args.vae,
        args.out,
        precision=args.precision,
        max_batch=args.max_batch,
        sampler=SamplerConfig(kind=args.sampler, num_steps=args.steps),
        overwrite=args.overwrite,
        graphs=ALL_GRAPHS if args.with_denoiser else DEFAULT_GRAPHS,
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


def add_parsers(sub: Any) -> None:
    """Add ``export`` to an ``argparse`` subparsers object."""
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
    p.add_argument("--max-batch", type=positive_int, default=8, help="largest batch the graphs/engines serve (default: 8)")
    p.add_argument("--sampler", choices=["euler", "heun", "euler_maruyama"], default="euler", help="default sampler")
    p.add_argument("--steps", type=step_count, default=4, help="default number of sampler steps (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--with-denoiser", action="store_true",
                   help="also export the self-contained `denoiser` graph (a whole sampler step; the runtime and "
                        "triton-repo never load it)")  # fmt: skip
    p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_export)
