"""``mmgen-edge export``: a model directory and a VAE -> an ONNX bundle (export extra).

With ``--decoder DIR`` / ``--encoder DIR`` (a distilled ``AutoencoderTiny``, e.g. from ``mmgen-edge distill-vae`` or
the public TAESD, or another ``AutoencoderKL``) the VAE graphs come from those, and the bundle is written only if it
passes the accuracy gate against the same bundle with ``--vae``'s own halves (exit 3 otherwise, unless ``--force``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mmgen_edge.cli import bounded_int, guidance_scale, noise_scale, nonnegative_int, positive_int, scene_count, step_count
from mmgen_edge.runtime.manifest import MAX_BATCH

#: Exit status when the gate refused a student VAE (as ``calibrate``'s; 2 is the CLI's usage / input error status).
EXIT_GATE_REFUSED = 3


def cmd_export(args: argparse.Namespace) -> int:
    from mmgen_edge.calibration.gate import GateThresholds
    from mmgen_edge.calibration.vae_gate import StudentGateError
    from mmgen_edge.export.onnx_export import ALL_GRAPHS, DEFAULT_GRAPHS, export_bundle
    from mmgen_edge.export.student_gate import StudentOptions
    from mmgen_edge.runtime.sampler import SamplerConfig

    interactive = args.progress or (not args.json and sys.stderr.isatty())
    students = StudentOptions(
        decoder=Path(args.decoder) if args.decoder else None, encoder=Path(args.encoder) if args.encoder else None,
        gate_data=args.gate_data, gate_scenes=args.gate_scenes, gate_frames=args.gate_frames,
        gate_steps=args.gate_steps, max_drop=GateThresholds.parse(args.max_drop), force=args.force,
        speed_frames=args.gate_speed_frames,
    )  # fmt: skip
    try:
        manifest = export_bundle(
            args.model_dir,
            args.vae,
            args.out,
            precision=args.precision,
            max_batch=args.max_batch,
            sampler=SamplerConfig(kind=args.sampler, num_steps=args.steps, cfg_scale=args.cfg_scale,
                                  noise_scale=args.noise_scale),
            overwrite=args.overwrite,
            graphs=ALL_GRAPHS if args.with_denoiser else DEFAULT_GRAPHS,
            progress=interactive,
            students=students,
            log=(lambda line: print(line, file=sys.stderr)) if not args.json else None,
        )
    except StudentGateError as e:
        print("\n".join(gate_lines(e.report)), file=sys.stderr)
        print(f"mmgen-edge export: {e}", file=sys.stderr)
        return EXIT_GATE_REFUSED
    if args.json:
        print(manifest.model_dump_json(indent=2))
        return 0
    total = sum(f.bytes for f in manifest.files)
    print(f"bundle       {args.out} ({len(manifest.files)} files, {total / 1e6:,.1f} MB, {manifest.precision.value})")
    print(f"model        {manifest.model.name}, {manifest.model.resolution} px, modalities {', '.join(manifest.modalities)}")
    print(f"sampler      {manifest.sampler.kind.value}, {manifest.sampler.num_steps} steps, guidance "
          f"{manifest.sampler.cfg_scale:g}, noise scale {manifest.sampler.noise_scale:g}; batch 1..{manifest.max_batch}")
    for name, graph in manifest.graphs.items():
        ins = ", ".join(f"{s.name}{list(s.shape)}" for s in graph.inputs)
        print(f"graph        {name}: {ins}")
    for half in ("encoder", "decoder"):
        part = getattr(manifest.vae, half)
        if part is not None:
            print(f"vae {half:<8} {part.family} from {part.source} ({part.parameters:,} parameters)")
    if manifest.vae.gate:
        print("\n".join(gate_lines(manifest.vae.gate)))
    return 0


def gate_lines(report: dict[str, Any]) -> list[str]:
    """A few readable lines of a student-VAE gate report."""
    from mmgen_edge.calibration.gate import GATE_METRICS

    verdict = "passed" if report.get("passed") else ("FAILED (written with --force)" if report.get("forced") else "FAILED")
    where = report.get("data") or f"{report.get('eval_scenes')} held-out scenes"
    lines = [f"gate         {verdict}: {report.get('mode')}, {where}, K={report.get('eval_steps')}"]
    ref, cand = report.get("reference", {}), report.get("candidate", {})
    for name, metric in GATE_METRICS.items():
        if metric.key in ref and metric.key in cand:
            lines.append(f"  {name:<14} full {ref[metric.key]:.4f}  student {cand[metric.key]:.4f}")
    speed = report.get("speed")
    if speed:
        up = speed["speedup"]
        lines.append(f"  speed        decode {speed['reference']['decode']:.1f} -> {speed['candidate']['decode']:.1f} ms "
                     f"({up['decode']:.2f}x), frame {up['frame']:.2f}x (ORT CPU, {speed['frames']} frames)")  # fmt: skip
    return lines


def add_parsers(sub: Any) -> None:
    """Add ``export`` to an ``argparse`` subparsers object."""
    from mmgen_edge.calibration.vae_gate import DEFAULT_GATE_FRAMES, DEFAULT_GATE_SCENES, DEFAULT_SPEED_FRAMES  # torch-free

    p = sub.add_parser(
        "export",
        help="export a model directory and a VAE into an ONNX bundle (manifest + graphs)",
        description="Trace the denoiser step (sampler update and CFG fused in), the conditioning cache pair and "
        "the VAE encoder/decoder into ONNX with a dynamic batch; write BUNDLE atomically with a hashed manifest. "
        "--decoder / --encoder take distilled VAE halves, gated against --vae's own.",
    )
    p.add_argument("model_dir", help="model directory (from `mmgen-edge convert` or the demo model)")
    p.add_argument("--vae", required=True, help="diffusers AutoencoderKL directory (e.g. sd-vae-ft-mse)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--max-batch", type=bounded_int(1, MAX_BATCH), default=8,
                   help=f"largest batch the graphs/engines serve (default: 8, at most {MAX_BATCH})")
    p.add_argument("--sampler", choices=["euler", "heun", "euler_maruyama"], default="euler", help="default sampler")
    p.add_argument("--steps", type=step_count, default=4, help="default number of sampler steps (default: 4)")
    p.add_argument("--cfg-scale", type=guidance_scale, default=1.0,
                   help="default classifier-free guidance of generation, 0..100 (default: 1, none); requests may "
                        "give their own")  # fmt: skip
    p.add_argument("--noise-scale", type=noise_scale, default=1.0,
                   help="class generation starts from seed noise times this, in (0, 2] (default: 1, the release's; "
                        "< 1 samples at a lower temperature: less diverse, more faithful class samples)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--with-denoiser", action="store_true",
                   help="also export the self-contained `denoiser` graph (a whole sampler step; the runtime and "
                        "triton-repo never load it)")  # fmt: skip
    g = p.add_argument_group("distilled VAE halves (the accuracy gate)")
    g.add_argument("--decoder", help="the vae_decoder from this diffusers AutoencoderTiny / AutoencoderKL directory "
                                     "(mmgen-edge distill-vae, or TAESD for SD-VAE latents)")  # fmt: skip
    g.add_argument("--encoder", help="the vae_encoder from this diffusers AutoencoderTiny / AutoencoderKL directory")
    g.add_argument("--gate-data", help="score agreement with --vae's own maps on these frames (folder, video or "
                                       "demo:N) instead of held-out shapes scenes with ground truth")  # fmt: skip
    g.add_argument("--gate-scenes", type=scene_count, default=DEFAULT_GATE_SCENES,
                   help=f"held-out scenes the gate scores (default {DEFAULT_GATE_SCENES})")  # fmt: skip
    g.add_argument("--gate-frames", type=positive_int, default=DEFAULT_GATE_FRAMES,
                   help=f"frames read from --gate-data (default {DEFAULT_GATE_FRAMES})")  # fmt: skip
    g.add_argument("--gate-steps", type=step_count, help="sampler steps of the gate (default: --steps)")
    g.add_argument("--gate-speed-frames", type=nonnegative_int, default=DEFAULT_SPEED_FRAMES,
                   help=f"frames timed per bundle for the report (default {DEFAULT_SPEED_FRAMES}; 0: none)")  # fmt: skip
    g.add_argument("--max-drop", default="", metavar="depth=0.01,normal=1.0,miou=0.02",
                   help="gate: largest allowed delta1 drop, normal-error rise (deg), mIoU drop, and object_depth, "
                        "object_normal, object_miou on the object pixels (defaults 0.01, 1.0, 0.02)")  # fmt: skip
    g.add_argument("--force", action="store_true", help="write the bundle even when the gate fails")
    p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_export)
