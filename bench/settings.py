"""What one bench run measures: the defaults, the --smoke sizes, and the :class:`Settings` made from the parsed
command line (the parser itself is ``run.build_parser``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("out/bench")

DEFAULT_BATCHES = (1, 4)
DEFAULT_STEPS = (1, 2, 4)
DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3
DEFAULT_STREAM_FRAMES = 40
DEFAULT_EVAL_SCENES = 16
#: --smoke: a tiny run that checks the whole bench end to end (numbers are not meaningful).
SMOKE_BATCHES = (1,)
SMOKE_STEPS = (1,)
SMOKE_RUNS = 3
SMOKE_WARMUP = 1
SMOKE_STREAM_FRAMES = 8
SMOKE_EVAL_SCENES = 2
#: --size xl / b2 (release architecture, random weights): one frame takes seconds on a small CPU, so fewer runs,
#: batch 1 and K = 1 (the issue's frame) unless asked; stream and accuracy mean nothing with random weights.
SIZE_BATCHES = (1,)
SIZE_STEPS = (1,)
SIZE_RUNS = 5
SIZE_WARMUP = 1
SIZE_SKIPPED = {"stream": "--size: random weights (a stream of them says nothing the perceive case does not)",
                "accuracy_latency": "--size: random weights have no accuracy"}

#: Time limit of the torch.compile trial (inductor can take minutes on a small CPU).
COMPILE_TIMEOUT_S = 300.0
#: The cases, in the order they run (their keys in the JSON); ``--skip`` names some of them.
CASES = ("step", "conditioning_cache", "perceive", "decoders", "backends", "stream", "accuracy_latency")


@dataclass(frozen=True)
class Settings:
    """What to run (arguments after --smoke overrides)."""

    batches: tuple[int, ...]
    steps: tuple[int, ...]
    runs: int
    warmup: int
    threads: int  # torch's intra-op threads (and the runtime's, unless runtime_threads says otherwise)
    stream_frames: int
    eval_scenes: int
    compile: bool
    compile_note: str
    compile_timeout_s: float
    torch_cuda: bool
    backend: str
    smoke: bool
    skip: tuple[str, ...] = ()  # cases of CASES not to run
    size: str | None = None  # --size: the release architecture with random weights (release_size.SIZES)
    skip_reasons: tuple[tuple[str, str], ...] = ()  # case -> why it is skipped, for skips not asked by --skip
    #: Threads of the bundles' sessions (ONNX Runtime, OpenVINO); None with ``--threads auto``: each session's own
    #: choice (``load(threads=None)``, see ``runtime.thread_choice``), torch on every CPU.
    runtime_threads: int | None = None


def parse_int_list(text: str) -> tuple[int, ...]:
    """``"1,4"`` -> ``(1, 4)``; raises ``argparse.ArgumentTypeError`` unless all are integers in 1..MAX_BATCH (a
    bundle's largest possible batch: larger ones were rendered and only then skipped)."""
    from mmgen_edge.runtime.manifest import MAX_BATCH

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1 or max(values) > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers in 1..{MAX_BATCH}, got {text!r}")
    return values


def parse_case_list(text: str) -> tuple[str, ...]:
    """``"stream,perceive"`` -> ``("perceive", "stream")`` (in CASES order); raises ``argparse.ArgumentTypeError``
    naming the unknown case and the known ones."""
    names = {v.strip() for v in text.split(",") if v.strip()}
    unknown = sorted(names - set(CASES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown or text!r}; the cases are {', '.join(CASES)}")
    return tuple(case for case in CASES if case in names)


#: ``--threads auto``: torch on every CPU, each runtime session chooses its own.
AUTO_THREADS = "auto"


def bench_threads(text: str) -> int | str:
    """An argparse ``type=`` for the bench's ``--threads``: ``auto`` or 1..MAX_THREADS."""
    from mmgen_edge.cli import thread_count

    return AUTO_THREADS if text == AUTO_THREADS else thread_count(text)


def default_threads() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    from mmgen_edge.runtime.thread_choice import available_cpus

    return available_cpus()


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of ``run.build_parser``'s arguments: a value not given takes the --smoke or the normal default.

    Raises:
        ValueError: --runs < 1, --warmup < 0 or --threads < 1.
    """
    smoke = bool(args.smoke)
    size = getattr(args, "size", None)

    def pick(value: Any, normal: Any, small: Any, sized: Any = None) -> Any:
        if value is not None:
            return value
        if smoke:
            return small
        return sized if size is not None and sized is not None else normal

    runs = pick(args.runs, DEFAULT_RUNS, SMOKE_RUNS, SIZE_RUNS)
    warmup = pick(args.warmup, DEFAULT_WARMUP, SMOKE_WARMUP, SIZE_WARMUP)
    auto_threads = args.threads == AUTO_THREADS
    threads = default_threads() if auto_threads else args.threads
    if runs < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need --runs >= 1, --warmup >= 0, --threads >= 1; got {runs}, {warmup}, {args.threads}")
    if args.compile == "auto" and size is not None:
        compile_on, note = False, "skipped with --size (inductor takes many minutes at the release size); pass --compile on"
    elif args.compile == "auto":
        compile_on = not smoke
        note = "skipped in --smoke (inductor takes minutes on a small CPU); pass --compile on" if smoke else "auto"
    else:
        compile_on, note = args.compile == "on", f"--compile {args.compile}"
    skips = size_skips(size, tuple(args.skip))
    return Settings(
        batches=pick(args.batch, DEFAULT_BATCHES, SMOKE_BATCHES, SIZE_BATCHES),
        steps=pick(args.steps, DEFAULT_STEPS, SMOKE_STEPS, SIZE_STEPS),
        runs=runs,
        warmup=warmup,
        threads=threads,
        runtime_threads=None if auto_threads else threads,
        stream_frames=max(1, pick(args.stream_frames, DEFAULT_STREAM_FRAMES, SMOKE_STREAM_FRAMES)),
        eval_scenes=max(0, pick(args.eval_scenes, DEFAULT_EVAL_SCENES, SMOKE_EVAL_SCENES)),
        compile=compile_on,
        compile_note=note,
        compile_timeout_s=args.compile_timeout_s,
        torch_cuda=bool(args.torch_cuda),
        backend=args.backend,
        smoke=smoke,
        skip=tuple(case for case in CASES if case in args.skip or case in skips),
        size=size,
        skip_reasons=tuple(skips.items()),
    )


def size_skips(size: str | None, asked: tuple[str, ...]) -> dict[str, str]:
    """The cases ``--size`` leaves out by default (with the reason), unless ``--skip`` already names them."""
    if size is None:
        return {}
    return {case: reason for case, reason in SIZE_SKIPPED.items() if case not in asked}

