"""``mmgen-edge demo`` and ``eval``: the bundled shapes model end to end, and its accuracy on held-out scenes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmgen_edge.cli import nonnegative_int, positive_int, step_count, step_list

def cmd_eval(args: argparse.Namespace) -> int:
    import mmgen_edge
    from mmgen_edge.samples.shapes.evaluate import run_evaluation
    from mmgen_edge.sdk.demo import ensure_demo_bundle

    steps = list(args.steps)  # step_list checked every count
    bundle = args.bundle or ensure_demo_bundle()
    with mmgen_edge.load(bundle, backend=args.backend) as model:
        report = run_evaluation(model, args.out, num_scenes=args.scenes, steps=steps,
                                generation_per_class=args.generation, progress=not args.json and sys.stderr.isatty())  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((Path(args.out) / "report.md").read_text(), end="")
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


def add_parsers(sub: Any) -> None:
    """Add ``eval`` and ``demo`` to an ``argparse`` subparsers object."""
    p = sub.add_parser("eval", help="accuracy on held-out shapes scenes for several step counts (demo model by default)")
    p.add_argument("--bundle", help="bundle to evaluate (default: the demo model's)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--scenes", type=positive_int, default=200, help="held-out scenes (default: 200)")
    p.add_argument("--steps", type=step_list, default="1,2,4,8,25", help="comma-separated step counts")
    p.add_argument("--generation", type=nonnegative_int, default=2, help="generated samples per class for the grid (0: none)")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled model (no download, no GPU)")
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--bundle", help="bundle to use instead of the demo model's")
    p.add_argument("--steps", type=step_count, help="sampler steps (default: the bundle's)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_demo)
