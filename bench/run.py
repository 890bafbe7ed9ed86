"""Benchmarks as ratios, in one process: denoiser step (PyTorch vs ONNX Runtime FP32 / INT8), conditioning cache,
whole ``perceive`` frames by stage, stream throughput, accuracy vs latency, and a roofline line per case.

    mmgen-edge bench --smoke                                      # tiny artifacts built in a temp dir, ~10-20 s
    mmgen-edge bench --bundle samples/shapes/bundle --bundle-int8 out/int8-bundle --out out/bench
    mmgen-edge bench --size xl                                    # the release size, random weights (release_size)

Writes ``OUT/bench.json`` and ``OUT/accuracy_latency.png``. Defaults are the demo model's paths
(``samples/shapes/weights/{mmgen,vae}``, ``samples/shapes/bundle``); with no fp32 bundle but a model directory
and a VAE, one is exported into a temp dir. Whatever is missing is skipped with the reason in the JSON, never a
crash. A case that fails is reported as ``{"error": ...}`` (and listed in ``errors``); the other cases still run.
``--skip stream,perceive`` leaves cases out (reported as skipped); ``--stream-frames N`` bounds the stream case.
``--size xl`` (or ``b2``) runs the same cases at the release's size: SiT-XL/2 (or B/2) and the SD-VAE at 256 px
with random weights, built once into ``--work`` (default ``out/bench-work``; model dir, fp32 bundle, CPU INT8
bundle, TAESD-decoder bundle: see ``release_size``) and found there by later runs; batch 1, K = 1, 5 runs unless
asked; ``meta.size`` gives what was built and each bundle's size on disk, and the goals are the XL targets.
On a busy machine (1-minute load average above ``BUSY_LOAD_PER_CPU`` x the CPUs at start) ``meta.warnings`` says
the numbers are not to be trusted: PyTorch's OpenMP threads collapse under oversubscription, ONNX Runtime's much less.

Ratios are speedups: ``A_vs_B`` = time(B) / time(A), so > 1 means A is faster. Candidates that are compared
are timed round-robin (``harness.measure_interleaved``) in the same process, so a background job slows them alike.
Threads (``--threads``): by default PyTorch runs on every CPU this process may use and each runtime session takes
``load()``'s own choice (``runtime.thread_choice``: a short ONNX Runtime CPU session may run faster on one thread),
so the figures are what a user of ``load()`` gets; ``--threads N`` puts PyTorch and every session on N.
Goals (``goals`` in the JSON) are reported with pass/fail, never asserted.

Cases
-----
- ``step``: one denoiser step (perception: no guidance, the rgb slot held at the condition timestep), per batch:
  PyTorch eager ``CachedDenoiserStep`` with precomputed modulation (the same computation as the bundle's
  ``denoiser_cached`` graph: the goal's baseline) and the plain ``model(x, t, y, task)`` + Euler path;
  ``torch.compile`` of the cached step (first tried in a child process with a time limit, since inductor can
  take minutes on a small CPU; skipped in ``--smoke`` unless ``--compile on``); ORT ``denoiser_cached`` FP32
  and INT8; PyTorch CUDA eager with ``--torch-cuda``.
- ``conditioning_cache``: ``DenoisingLoop.velocity_step`` with the modulation cache warm vs a loop with
  ``cache_size=0`` (``conditioning`` + ``denoiser_cached`` every step).
- ``perceive``: ``model.perceive`` of a held-out scene at K steps, median per stage (SDK ``timings``).
- ``backends``: the fp32 bundle on ORT FP32, OpenVINO fp32 and OpenVINO bf16 (emulated and labelled so where the
  CPU has no bf16), batch 1 per K, round-robin: whole frame and encode / one step / decode, speedups vs ORT.
- ``decoders``: the fp32 bundle next to the same bundle with a distilled decoder (``--bundle-tiny``), per K:
  each stage and the whole frame, interleaved frame by frame, speedups, and the FLOPs of both decoders and frames.
- ``stream``: a video of held-out scenes streamed with ``realtime=False``; frames/s vs 1 / (median single-frame
  latency at the same K, measured right before and after the stream).
- ``accuracy_latency``: accuracy of ``mmgen-edge eval --json`` reports (``--eval-json``) or, without one, of a
  small SDK evaluation on ``--eval-scenes`` held-out scenes, against the perceive latency measured here.

Roofline: FLOPs and bytes per call come from the ONNX graphs (``harness.graph_cost``); this CPU's peak is a
measured numpy GEMM and copy (run last, after the peak RSS is recorded, as their buffers are large); the
H100 / RTX 4090 / Orin lines give the roofline bound there and the fraction of it needed to match this CPU.

Modules: ``settings`` (what to run), ``artifacts`` (the inputs), ``context`` (the live state), ``case_step``,
``case_cache``, ``case_perceive``, ``case_backends``, ``case_stream``, ``case_accuracy`` (one case each), ``costs`` and ``roofline``
(FLOPs, bytes, roofline lines), ``report`` (ratios, goals, the JSON); this one parses the command line and runs the
cases in order.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmgen_edge.cli import backend_name, bounded_int, nonnegative_int, positive_float, positive_int, step_list
from mmgen_edge.runtime.fileio import file_in_the_way

from . import harness
from .artifacts import (
    DEFAULT_MODEL_DIR,
    TINY,
    DEFAULT_VAE_DIR,
    artifact_facts,
    build_tiny_artifacts,
    export_missing_bundle,
    find_artifacts,
)
from .case_accuracy import PLOT_FILE, bench_accuracy
from .case_backends import bench_backends
from .case_cache import bench_cache
from .case_decoders import bench_decoders
from .case_perceive import bench_perceive
from .case_step import bench_step
from .case_stream import bench_stream
from .context import Context, load_torch_model, open_models, release
from .outcomes import skipped
from .release_size import DEFAULT_WORK, SIZES, build_size_artifacts, release_size
from .report import (
    busy_warnings,
    collect_ratios,
    environment_facts,
    evaluate_goals,
    load_average,
    print_summary,
    write_report,
)
from .roofline import add_rooflines, this_cpu_peaks
from .settings import (
    AUTO_THREADS,
    CASES,
    COMPILE_TIMEOUT_S,
    DEFAULT_EVAL_SCENES,
    DEFAULT_OUT,
    DEFAULT_RUNS,
    DEFAULT_STREAM_FRAMES,
    DEFAULT_WARMUP,
    bench_threads,
    default_threads,
    parse_case_list,
    parse_int_list,
    settings_from,
)


def eval_scene_count(text: str) -> int:
    """An argparse ``type=`` for ``--eval-scenes``: 0 (none) .. ``MAX_HELD_OUT_SCENES`` (imported when parsing)."""
    from mmgen_edge.samples.shapes.evaluate import MAX_HELD_OUT_SCENES

    return bounded_int(0, MAX_HELD_OUT_SCENES)(text)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``mmgen-edge bench`` (``settings.settings_from`` turns it into Settings)."""
    p = argparse.ArgumentParser(
        prog="mmgen-edge bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--model-dir", type=Path, help=f"converted model directory (default {DEFAULT_MODEL_DIR})")
    add("--vae-dir", type=Path,
        help=f"diffusers VAE directory (default {DEFAULT_VAE_DIR}); only to export an fp32 bundle if --bundle is missing")
    add("--bundle", type=Path, help="fp32 bundle (default: the demo bundle, samples/shapes/bundle or $MMGEN_EDGE_BUNDLE)")
    add("--bundle-int8", type=Path, help="INT8 bundle from mmgen-edge calibrate (optional)")
    add("--bundle-tiny", type=Path,
        help="the fp32 bundle with a distilled decoder (mmgen-edge export --decoder; default: the demo's, "
             "samples/shapes/bundle-tiny, when --bundle is not given)")
    add("--batch", type=parse_int_list, default=None, help="batch sizes (default 1,4)")
    add("--steps", type=step_list, default=None, help="sampler steps K of the perceive cases (default 1,2,4)")
    add("--runs", type=positive_int, default=None, help=f"timed runs per case (default {DEFAULT_RUNS})")
    add("--warmup", type=nonnegative_int, default=None, help=f"untimed runs first (default {DEFAULT_WARMUP})")
    add("--threads", type=bench_threads, default=AUTO_THREADS,
        help="auto (default): torch on every CPU, each ONNX Runtime / OpenVINO session its own choice, as load() "
             "does without threads= (so the figures are what a user gets); N: torch and every session on N threads")
    add("--stream-frames", type=positive_int, default=None,
        help=f"frames of the stream video (default {DEFAULT_STREAM_FRAMES}; --skip stream leaves the case out)")
    add("--skip", type=parse_case_list, default=(), metavar="CASES",
        help=f"comma-separated cases not to run, reported as skipped (of {', '.join(CASES)})")
    add("--eval-json", type=Path, action="append", default=[], help="an `mmgen-edge eval --json` report (repeatable)")
    add("--eval-scenes", type=eval_scene_count, default=None,
        help=f"without --eval-json: held-out scenes of the small SDK evaluation (default {DEFAULT_EVAL_SCENES}; 0 = none)")
    add("--compile", choices=("auto", "on", "off"), default="auto", help="try torch.compile (auto: yes unless --smoke)")
    add("--compile-timeout-s", type=positive_float, default=COMPILE_TIMEOUT_S, help="time limit of the torch.compile trial")
    add("--torch-cuda", action="store_true", help="add the PyTorch CUDA eager step when a GPU is available")
    add("--backend", type=backend_name, default="ort-cpu", help="SDK backend of the bundles (default ort-cpu)")
    add("--size", choices=tuple(SIZES),
        help="bench the release architecture of this size with random weights (speed only), built once in --work")
    add("--work", type=Path, default=DEFAULT_WORK, help=f"--size: where its artifacts are built and kept (default {DEFAULT_WORK})")
    add("--smoke", action="store_true",
        help="tiny run: runs=3, batch 1, steps 1; builds tiny artifacts in a temp dir when no path is given")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    return p  # fmt: skip


def run_case(ctx: Context, case: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One case of CASES: ``{"skipped": "--skip CASE"}`` when --skip names it, else its result (or its error)."""
    if case in ctx.settings.skip:
        return skipped(dict(ctx.settings.skip_reasons).get(case, f"--skip {case}"))
    print(f"bench: {case} ...", file=sys.stderr, flush=True)  # at the release size a case takes minutes
    start = time.perf_counter()
    result = ctx.attempt(case, fn)
    print(f"bench: {case} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def run_bench(ctx: Context, out_dir: Path, workdir: Path, size: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every case in order; the machine's peaks last (their buffers would inflate the peak RSS).

    ``size``: what ``--size`` built (``release_size.build_size_artifacts``'s facts), for ``meta.size``."""
    meta: dict[str, Any] = {**environment_facts(ctx.settings), "settings": vars(ctx.settings).copy(),
                            "load_average_at_start": ctx.load_at_start,
                            "warnings": busy_warnings(ctx.load_at_start, default_threads())}  # fmt: skip
    if size is not None:
        meta["size"] = size
    meta["export"] = ctx.attempt(
        "export the fp32 bundle", lambda: export_missing_bundle(ctx.artifacts, ctx.settings.batches, workdir)
    )
    meta["artifacts"] = artifact_facts(ctx.artifacts)
    meta["bundles"] = open_models(ctx)
    meta["torch_model"] = ctx.attempt("torch model", lambda: load_torch_model(ctx))
    report: dict[str, Any] = {"meta": meta}
    (out_dir / PLOT_FILE).unlink(missing_ok=True)  # never leave a previous run's plot next to this run's JSON
    rss: dict[str, int] = {"after_load": harness.peak_rss_bytes()}
    report["step"] = run_case(ctx, "step", lambda: bench_step(ctx))
    release(ctx)  # the PyTorch model: only the step case times it
    rss["after_step"] = harness.peak_rss_bytes()
    report["conditioning_cache"] = run_case(ctx, "conditioning_cache", lambda: bench_cache(ctx))
    report["perceive"] = run_case(ctx, "perceive", lambda: bench_perceive(ctx))
    rss["after_perceive"] = harness.peak_rss_bytes()
    report["decoders"] = run_case(ctx, "decoders", lambda: bench_decoders(ctx))
    release(ctx, TINY)  # before the backends case opens OpenVINO's copies
    report["backends"] = run_case(ctx, "backends", lambda: bench_backends(ctx))
    report["stream"] = run_case(ctx, "stream", lambda: bench_stream(ctx, workdir))
    report["accuracy_latency"] = run_case(ctx, "accuracy_latency", lambda: bench_accuracy(ctx, out_dir))
    report["peak_rss_bytes"] = harness.peak_rss_bytes()
    report["peak_rss_bytes_by_stage"] = rss
    report["machine"] = {"this_cpu": this_cpu_peaks(), "device_peaks": harness.DEVICE_PEAKS}
    add_rooflines(report, report["machine"]["this_cpu"])
    report["ratios"] = collect_ratios(report)
    report["goals"] = evaluate_goals(report["ratios"], ctx.settings.size)
    report["errors"] = ctx.errors
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``mmgen-edge bench ARGS``: run the bench, write ``OUT/bench.json`` (and the plot), print the summary.

    Args:
        argv: the arguments after ``bench`` (None: ``sys.argv[1:]``).

    Returns:
        0; failed cases are reported in the JSON's ``errors``, not by the exit status.
    """
    load_at_start = load_average()
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from(args)
    out_dir: Path = args.out
    given = any(p is not None for p in (args.model_dir, args.vae_dir, args.bundle, args.bundle_int8, args.bundle_tiny))
    if args.size is not None and given:
        parser.error("--size builds its own model and bundles; leave out --model-dir, --vae-dir and --bundle*")
    for name, folder in (("--out", out_dir), *((("--work", args.work),) if args.size is not None else ())):
        blocked = file_in_the_way(folder)
        if blocked is not None:
            parser.error(f"{name} {folder}: {blocked} is a file, not a folder")
    for report in args.eval_json:
        if not report.is_file():
            parser.error(f"--eval-json {report}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmgen-bench-") as tmp:
        workdir = Path(tmp)
        size_facts = None
        if args.size is not None:
            artifacts, size_facts = build_size_artifacts(
                release_size(args.size, smoke=settings.smoke), args.work, max(settings.batches), settings.threads,
                with_tiny="decoders" not in settings.skip,
            )
        elif settings.smoke and not given:
            artifacts = build_tiny_artifacts(workdir)
        else:
            artifacts = find_artifacts(args)
        ctx = Context(settings, artifacts, eval_json=list(args.eval_json), load_at_start=load_at_start)
        try:
            report = run_bench(ctx, out_dir, workdir, size_facts)
        finally:
            for model in ctx.models.values():
                model.close()
    json_path = write_report(report, out_dir)
    print_summary(report, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
