"""The ``mmgen-edge`` command line: the application on top of the SDK.

Every subcommand lives in its own module, named in :data:`COMMANDS`, and that module is imported only when its
subcommand runs, so ``mmgen-edge --help`` and the torch-free subcommands (``doctor``, ``perceive``, ``generate``,
``stream``) work on the base install (``pip install mmgen-edge``). A subcommand whose extra is missing says which
extra to install and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mmgen_edge import __version__

#: Exit status for usage errors, bad input and missing extras (argparse uses 2 too).
EXIT_USAGE = 2

#: Top-level package of a missing module -> the extra that installs it.
EXTRA_OF_PACKAGE: dict[str, str] = {
    "torch": "export",
    "onnx": "export",
    "diffusers": "export",
    "safetensors": "export",
    "onnxscript": "export",
    "pytriton": "serve",
    "tritonclient": "client",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "matplotlib": "dev",
    "openvino": "openvino",
}


@dataclass(frozen=True)
class Command:
    """One subcommand: the module that adds its parser (``add_parsers(subparsers)``) and the extra it needs."""

    module: str
    help: str
    extra: str | None = None


COMMANDS: dict[str, Command] = {
    "convert": Command("mmgen_edge.commands.convert", "import a release (or release-layout) training checkpoint into a model directory", "export"),
    "export": Command("mmgen_edge.commands.export", "export a model directory and a VAE into an ONNX bundle (manifest + graphs)", "export"),
    "distill-vae": Command("mmgen_edge.commands.distill_vae", "distil a tiny VAE decoder (and encoder) from a bundle's VAE, for export --decoder", "export"),
    "calibrate": Command("mmgen_edge.calibration.cli", "INT8-quantize a bundle's denoiser (explicit Q/DQ) with an accuracy gate", "export"),
    "build": Command("mmgen_edge.commands.build", "build TensorRT engines for a bundle on this GPU (recorded in its manifest)", "tensorrt"),
    "perceive": Command("mmgen_edge.commands.perceive", "depth, normals and segmentation of images (writes PNGs, or --json)"),
    "generate": Command("mmgen_edge.commands.perceive", "class-conditioned or map-conditioned generation (writes PNGs)"),
    "stream": Command("mmgen_edge.commands.perceive", "perceive a camera, video file, URL (or several) into a video file or a window"),
    "eval": Command("mmgen_edge.commands.demo", "accuracy on held-out shapes scenes for several step counts (demo model by default)"),
    "bench": Command("mmgen_edge.bench.run", "benchmarks as ratios in one run (mmgen-edge bench --help)", "export"),
    "serve": Command("mmgen_edge.serve.cli", "serve a bundle through Triton Inference Server (PyTriton)", "serve"),
    "triton-repo": Command("mmgen_edge.serve.cli", "write a Triton model repository for a bundle"),
    "doctor": Command("mmgen_edge.commands.doctor", "what this machine offers (backends, GPU, TensorRT) and what a bundle needs"),
    "demo": Command("mmgen_edge.commands.demo", "run the end-to-end demo on the bundled model (no download, no GPU)"),
}  # fmt: skip


# ------------------------------------------------------------------------------ option types (bounds checked)
def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` that accepts an integer in ``low..high`` (no upper bound when ``high`` is None).

    Args:
        low: the smallest accepted value.
        high: the largest accepted value, or None.

    Returns:
        The converter; it raises ``argparse.ArgumentTypeError``, which argparse reports as
        ``argument --OPTION: must be ...`` with exit status 2.
    """
    bound = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    convert.__name__ = f"int {low}..{high if high is not None else ''}"
    return convert


#: Counts that must be at least one (batches, samples, threads, instances, frames, scenes, runs).
positive_int = bounded_int(1)
#: Counts where 0 means "none" (warm-up runs, generated samples), and seeds.
nonnegative_int = bounded_int(0)
#: TCP ports.
port = bounded_int(1, 65535)
#: Sampling seeds: the SDK's and the server's bounds (``sdk.protocol.MAX_SEED``, an int64).
seed_value = bounded_int(0, 2**63 - 1)
#: Samples one command generates (``generate --num``).
MAX_SAMPLES = 100_000
sample_count = bounded_int(1, MAX_SAMPLES)


def thread_count(text: str) -> int:
    """An argparse ``type=`` for intra-op threads of ONNX Runtime / torch: 1..``runtime.backend.MAX_THREADS``."""
    from mmgen_edge.runtime.backend import MAX_THREADS  # imported when parsing, so that --help stays light

    return bounded_int(1, MAX_THREADS)(text)


def backend_name(text: str) -> str:
    """An argparse ``type=`` for ``--backend``: ``auto``, ``openvino`` or one of the local backend kinds."""
    from mmgen_edge.runtime.backend import LOCAL_KINDS, OPENVINO_ANY

    names = ("auto", *(k.value for k in LOCAL_KINDS), OPENVINO_ANY)
    if text not in names:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(names)}; got {text!r}")
    return text


def step_count(text: str) -> int:
    """An argparse ``type=`` for a sampler step count, checked by ``runtime.sampler.check_steps`` (1..MAX_STEPS)."""
    from mmgen_edge.runtime.sampler import check_steps  # imported when parsing, so that --help stays light

    try:
        return check_steps(int(text))
    except ValueError as e:  # int() of a non-number, or out of range
        digits = text.strip().lstrip("+-")
        message = str(e) if digits.isascii() and digits.isdigit() else f"steps must be an integer, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def positive_float(text: str) -> float:
    """An argparse ``type=`` for a finite number > 0 (frame rates, time limits)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """An argparse ``type=`` for a finite number (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def guidance_scale(text: str) -> float:
    """An argparse ``type=`` for a classifier-free guidance scale, checked by ``runtime.sampler.check_cfg_scale``
    (a finite number in 0..MAX_CFG_SCALE)."""
    from mmgen_edge.runtime.sampler import MAX_CFG_SCALE, check_cfg_scale  # imported when parsing: --help stays light

    try:
        return check_cfg_scale(finite_float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_CFG_SCALE:g}, got {text!r}") from None


def noise_scale(text: str) -> float:
    """An argparse ``type=`` for ``SamplerConfig.noise_scale``: a number in (0, MAX_NOISE_SCALE]."""
    from mmgen_edge.runtime.sampler import MAX_NOISE_SCALE  # imported when parsing: --help stays light

    value = finite_float(text)
    if not 0.0 < value <= MAX_NOISE_SCALE:
        raise argparse.ArgumentTypeError(f"must be a number in (0, {MAX_NOISE_SCALE:g}], got {text!r}")
    return value


def video_fps(text: str) -> float:
    """An argparse ``type=`` for the frame rate of a written video: a number in ``sdk.stream``'s
    [MIN_VIDEO_FPS, MAX_VIDEO_FPS]."""
    from mmgen_edge.sdk.stream import MAX_VIDEO_FPS, MIN_VIDEO_FPS  # imported when parsing: --help stays light

    value = positive_float(text)
    if not MIN_VIDEO_FPS <= value <= MAX_VIDEO_FPS:
        raise argparse.ArgumentTypeError(f"must be a number in [{MIN_VIDEO_FPS:g}, {MAX_VIDEO_FPS:g}], got {text!r}")
    return value


def scene_count(text: str) -> int:
    """An argparse ``type=`` for a number of held-out scenes: 1..``samples.shapes.evaluate.MAX_HELD_OUT_SCENES``."""
    from mmgen_edge.samples.shapes.evaluate import MAX_HELD_OUT_SCENES  # imported when parsing: --help stays light

    return bounded_int(1, MAX_HELD_OUT_SCENES)(text)


def step_list(text: str) -> tuple[int, ...]:
    """An argparse ``type=`` for comma-separated sampler step counts (``"1,2,4"``), each as :func:`step_count`."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must be comma-separated step counts, got {text!r}")
    try:
        return tuple(step_count(part) for part in parts)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (in {text!r})") from None


#: Distributions whose import name is not their project name (the rest: "-" read as "_").
MODULE_OF_DISTRIBUTION = {"cuda-python": "cuda", "nvidia-pytriton": "pytriton"}


def modules_of_extra(extra: str) -> frozenset[str]:
    """Top-level modules the installed package's ``extra`` provides, read from its metadata (pyproject's lists);
    empty when the metadata cannot be read."""
    import importlib.metadata
    import re

    try:
        requirements = importlib.metadata.requires("mmgen-edge") or []
    except importlib.metadata.PackageNotFoundError:
        return frozenset()
    modules = set()
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if re.search(rf"extra\s*==\s*[\"']{re.escape(extra)}[\"']", marker):
            dist = re.split(r"[\[<>=!~ ]", name.strip(), maxsplit=1)[0].lower()
            modules.add(MODULE_OF_DISTRIBUTION.get(dist, dist.replace("-", "_")))
    return frozenset(modules)


def missing_extra_message(error: ModuleNotFoundError, command: str) -> str | None:
    """The install hint for a module that an extra provides, or None when ``error`` is not about an extra: the
    command's own extra when it provides the module (``build`` needs onnx from ``tensorrt``, not ``export``),
    else the extra that provides it."""
    root = (error.name or "").split(".")[0]
    own = COMMANDS[command].extra if command in COMMANDS else None
    extra = own if own and root in modules_of_extra(own) else EXTRA_OF_PACKAGE.get(root)
    if extra is None:
        return None
    torch_first = " (install torch first: pip install torch==2.13.0 for the CPU build)" if extra == "export" else ""
    return f"mmgen-edge {command}: needs the {extra} extra ({root} is not installed): pip install 'mmgen-edge[{extra}]'{torch_first}"


def _top_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: mmgen-edge [--version] COMMAND [ARGS ...]",
        "",
        "Deploy MMGen: import checkpoints, export ONNX bundles and TensorRT engines, perceive / generate / stream.",
        "",
        "commands:",
    ]
    for name, command in COMMANDS.items():
        extra = f"  [extra: {command.extra}]" if command.extra else ""
        lines.append(f"  {name:<{width}}  {command.help}{extra}")
    lines += ["", "mmgen-edge COMMAND --help describes a command."]
    return "\n".join(lines)


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (importing that subcommand's module, and nothing else)."""
    module = importlib.import_module(COMMANDS[command].module)
    parser = argparse.ArgumentParser(prog="mmgen-edge")
    parser.add_argument("--version", action="version", version=f"mmgen-edge {__version__}")
    module.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mmgen-edge``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        print(f"mmgen-edge {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"{_top_help()}\n\nmmgen-edge: error: unknown command {name!r}", file=sys.stderr)
        return EXIT_USAGE
    _exit_on_sigterm()
    try:
        if name == "bench":  # the benchmark has its own parser: hand it the rest of the line
            from mmgen_edge.bench.run import main as bench_main

            return int(bench_main(argv[1:]) or 0)
        args = build_parser(name).parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except ModuleNotFoundError as e:
        hint = missing_extra_message(e, name)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError, RuntimeError, ImportError) as e:  # OSError: files, folders, connections
        print(f"mmgen-edge {name}: error: {describe_error(e)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"mmgen-edge {name}: error: out of memory (an input, a model or a setting larger than this machine "
              "holds)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE


#: The exit status of a command stopped by SIGTERM (128 + 15, as a shell reports it).
EXIT_SIGTERM = 143


def _exit_on_sigterm() -> None:
    """SIGTERM (``kill``, ``docker stop``, a scheduler) unwinds like Ctrl-C: the atomic writers remove their
    temporaries (a 571 MB export temporary stayed behind otherwise) and the command exits 143. ``serve`` installs
    its own handler (finish in-flight requests, then stop)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(EXIT_SIGTERM)

    signal.signal(signal.SIGTERM, stop)


def describe_error(error: Exception) -> str:
    """One readable line per problem; pydantic's validation errors become ``field: message (got value)``."""
    from pydantic import ValidationError

    from mmgen_edge.runtime.manifest import describe_validation_error

    if isinstance(error, ValidationError):
        return describe_validation_error(error)
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
