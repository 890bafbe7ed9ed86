"""torch.compile of the cached denoiser step: a trial in a child process under a time limit (inductor can take
minutes on a small CPU, or fail), then, when it worked, the compiled step in this process for the step case."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .context import Context
from .inputs import StepInputs, step_inputs
from .outcomes import ERROR_TRACEBACK_LINES, skipped

COMPILE_PROBE = r"""
import json, sys
from mmgen_edge.bench import torch_compile
print(json.dumps(torch_compile.compile_probe(sys.argv[2], [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4]))))
"""


def compile_probe(model_dir: str, batches: Sequence[int], threads: int) -> dict[str, float]:
    """(In a child process) torch.compile the cached step and run it once per batch; returns seconds per batch."""
    import torch

    from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning
    from mmgen_edge.export.model_dir import load_model
    from mmgen_edge.runtime.sampler import SamplerConfig

    torch.set_num_threads(threads)
    model = load_model(model_dir, dtype=torch.float32)
    compiled = torch.compile(CachedDenoiserStep(model).eval(), dynamic=False)
    seconds: dict[str, float] = {}
    for n in batches:
        inputs = step_inputs(model.config, SamplerConfig(), n)
        t, y, task = torch.from_numpy(inputs.t_cur), torch.from_numpy(inputs.labels), torch.from_numpy(inputs.task)
        start = time.perf_counter()
        with torch.inference_mode():
            blocks, heads = Conditioning(model)(t, y, task)
            compiled(torch.from_numpy(inputs.x), t, torch.from_numpy(inputs.t_next), blocks, heads, torch.tensor([1.0]))
        seconds[str(n)] = time.perf_counter() - start
    return seconds


def try_compile(ctx: Context) -> dict[str, Any]:
    """torch.compile in a child process under a time limit; the JSON gets the outcome and the reason of a failure."""
    s = ctx.settings
    if not s.compile:
        return skipped(s.compile_note)
    if ctx.torch_model is None:
        return skipped("no PyTorch model")
    command = [sys.executable, "-c", COMPILE_PROBE, "-", str(ctx.artifacts.model_dir),
               ",".join(map(str, s.batches)), str(s.threads)]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=s.compile_timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"torch.compile did not finish within {s.compile_timeout_s:.0f} s (the trial process was killed)"}
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-ERROR_TRACEBACK_LINES:])
        return {"error": f"torch.compile trial failed (exit {done.returncode}): {tail}"}
    return {"ok": True, "trial_seconds": time.perf_counter() - start,
            "first_call_seconds_by_batch": json.loads(done.stdout.strip().splitlines()[-1])}  # fmt: skip


def compiled_step_fn(ctx: Context, inputs: StepInputs) -> tuple[Callable[[], object], float]:
    """The in-process compiled cached step (inductor's cache is warm from the trial) and its first-call seconds."""
    import torch

    from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning

    model = ctx.torch_model
    compiled = torch.compile(CachedDenoiserStep(model).eval(), dynamic=False)
    x, t_cur, t_next = (torch.from_numpy(a) for a in (inputs.x, inputs.t_cur, inputs.t_next))
    y, task, scale = torch.from_numpy(inputs.labels), torch.from_numpy(inputs.task), torch.tensor([1.0])
    with torch.inference_mode():
        blocks, heads = Conditioning(model)(t_cur, y, task)

    def step() -> object:
        with torch.inference_mode():
            return compiled(x, t_cur, t_next, blocks, heads, scale)

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start
