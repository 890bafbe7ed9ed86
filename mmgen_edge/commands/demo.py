"""``mmgen-edge demo`` and ``eval``: the bundled shapes model end to end, and its accuracy on held-out scenes."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from mmgen_edge.cli import (
    backend_name, bounded_int, guidance_scale, scene_count, seed_value, step_count, step_list,
)


def cmd_eval(args: argparse.Namespace) -> int:
    import mmgen_edge
    from mmgen_edge.samples.shapes.evaluate import run_evaluation
    from mmgen_edge.sdk.demo import ensure_demo_bundle

    steps = list(args.steps)  # step_list checked every count
    bundle = args.bundle or ensure_demo_bundle()
    if args.compare and args.no_compare:
        raise ValueError("give --compare BUNDLE or --no-compare, not both")
    compare_bundle = args.compare or (None if args.bundle or args.no_compare else _demo_tiny_bundle())
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(mmgen_edge.load(bundle, backend=args.backend))
        compare = stack.enter_context(mmgen_edge.load(compare_bundle, backend=model.backend)) if compare_bundle else None
        report = run_evaluation(model, args.out, num_scenes=args.scenes, steps=steps,
                                generation_per_class=args.generation, progress=not args.json and sys.stderr.isatty(),
                                compare=compare, generation_cfg_scale=args.cfg_scale,
                                generation_seed=args.generation_seed)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((Path(args.out) / "report.md").read_text(), end="")
    return 0


def _demo_tiny_bundle() -> Path | None:
    """The demo's distilled-decoder bundle, or None (with a note) when it cannot be had here."""
    from mmgen_edge.sdk.demo import ensure_tiny_decoder_bundle

    try:
        return ensure_tiny_decoder_bundle()
    except (RuntimeError, FileNotFoundError) as e:
        print(f"mmgen-edge eval: not comparing the distilled decoder: {e}", file=sys.stderr)
        return None


def cmd_demo(args: argparse.Namespace) -> int:
    from mmgen_edge.sdk.demo import run_demo

    report = run_demo(args.out, steps=args.steps, seed=args.seed, bundle=args.bundle, tiny_bundle=args.tiny_bundle,
                      compare=not args.no_compare)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((Path(args.out) / "report.md").read_text(), end="")
        print(f"written to {args.out}/")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``eval`` and ``demo`` to an ``argparse`` subparsers object."""
    p = sub.add_parser("eval", help="accuracy on held-out shapes scenes for several step counts (demo model by default)")
    p.add_argument("--bundle", help="bundle to evaluate (default: the demo model's)")
    p.add_argument("--backend", type=backend_name, default="auto")
    p.add_argument("--scenes", type=scene_count, default=200, help="held-out scenes (default: 200)")
    p.add_argument("--steps", type=step_list, default="1,2,4,8,25", help="comma-separated step counts")
    p.add_argument("--generation", type=bounded_int(0, 1000), default=2, help="generated samples per class for the grid (0: none; at most 1000)")
    p.add_argument("--cfg-scale", type=guidance_scale,
                   help="guidance of the class samples, 0..100 (default: the bundle's, as users sample)")
    p.add_argument("--generation-seed", type=bounded_int(0, 2**62), default=0,
                   help="seed of the first class sample (sample j of class c: this + 1000 c + j; default 0). Choose "
                        "sampler settings on other seeds than the ones you report")  # fmt: skip
    p.add_argument("--compare", help="a second bundle scored and timed side by side on the same scenes (default for the "
                                     "demo model: its distilled-decoder bundle)")  # fmt: skip
    p.add_argument("--no-compare", action="store_true", help="evaluate the bundle alone")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled model (no download, no GPU)")
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--bundle", help="bundle to use instead of the demo model's")
    p.add_argument("--steps", type=step_count, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=seed_value, default=0)
    p.add_argument("--tiny-bundle", help="the distilled-decoder bundle compared with --bundle (default: the demo's own)")
    p.add_argument("--no-compare", action="store_true", help="skip the distilled decoder's side-by-side comparison")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_demo)
