"""Export with a distilled VAE half: the options, and the gate that compares the bundle with the full VAE's.

    export_bundle(model, vae, out, students=StudentOptions(decoder=Path("out/tiny-vae")))

:func:`gate_students` stages the *reference* bundle beside the candidate (its transformer graphs hard-linked, the
teacher's own VAE graphs traced for the ones a student replaced), runs
:func:`mmgen_edge.calibration.vae_gate.gate_student_bundle` and, unless forced, refuses a bundle that fails
(:class:`~mmgen_edge.calibration.vae_gate.StudentGateError`: the export writes nothing). The report goes into the
manifest's ``vae.gate``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgen_edge.calibration.gate import GateThresholds
from mmgen_edge.calibration.vae_gate import (
    DEFAULT_GATE_FRAMES,
    DEFAULT_GATE_SCENES,
    DEFAULT_SPEED_FRAMES,
    StudentGateError,
    gate_student_bundle,
)
from mmgen_edge.runtime.fileio import link_or_copy
from mmgen_edge.runtime.manifest import AutoencoderPart, GraphEntry, Manifest, file_entry, write_manifest

#: Where the reference bundle is staged, inside the bundle being written (removed before it is renamed into place).
REFERENCE_DIR = ".gate-reference"


@dataclass(frozen=True)
class StudentOptions:
    """Distilled VAE halves for ``export_bundle`` and how their gate runs.

    Attributes:
        decoder / encoder: diffusers ``AutoencoderTiny`` (or ``AutoencoderKL``) directories; None keeps the VAE's own.
        gate_data: None scores held-out shapes scenes against ground truth; a folder, a video or ``demo:N`` scores
            agreement with the full VAE's maps on those frames instead (the user's frames: no ground truth needed).
        gate_scenes / gate_frames: how many held-out scenes / data frames.
        gate_steps: sampler steps of the gate (None: the bundle's default).
        max_drop: allowed worsening per metric; ``force`` writes a failing bundle anyway (marked so in the report).
        speed_frames: frames timed per bundle for the report (0: none).
        threads: ONNX Runtime threads of the gate (None: ORT's default).
    """

    decoder: Path | None = None
    encoder: Path | None = None
    gate_data: str | None = None
    gate_scenes: int = DEFAULT_GATE_SCENES
    gate_frames: int = DEFAULT_GATE_FRAMES
    gate_steps: int | None = None
    max_drop: GateThresholds = field(default_factory=GateThresholds)
    force: bool = False
    speed_frames: int = DEFAULT_SPEED_FRAMES
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("gate_scenes", "gate_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.speed_frames, int) or self.speed_frames < 0:
            raise ValueError(f"speed_frames must be an integer >= 0, got {self.speed_frames!r}")


ExportGraph = Callable[[nn.Module, tuple[torch.Tensor, ...], str, Path], GraphEntry]


def stage_reference(
    bundle: Path, manifest: Manifest, reference_graphs: Mapping[str, tuple[nn.Module, tuple[torch.Tensor, ...]]],
    teacher: Mapping[str, AutoencoderPart], export_graph: ExportGraph,
) -> Path:  # fmt: skip
    """``bundle/.gate-reference``: the bundle with the teacher's own graphs for ``reference_graphs``."""
    reference = bundle / REFERENCE_DIR
    reference.mkdir()
    replaced = {manifest.graphs[name].file for name in reference_graphs}
    replaced |= {manifest.graphs[name].external_data for name in reference_graphs} - {None}
    for entry in manifest.files:
        if entry.path not in replaced:
            link_or_copy(bundle / entry.path, reference / entry.path)
    graphs = dict(manifest.graphs)
    for name, (module, args) in reference_graphs.items():
        graphs[name] = export_graph(module, args, name, reference)
    files = sorted(p.name for p in reference.iterdir() if p.is_file())
    vae = manifest.vae.model_copy(update={"encoder": teacher["encoder"], "decoder": teacher["decoder"], "gate": None})
    write_manifest(reference, manifest.model_copy(update={
        "graphs": graphs, "vae": vae, "files": tuple(file_entry(reference, f) for f in files)}))  # fmt: skip
    return reference


def gate_students(
    bundle: Path,
    manifest: Manifest,
    reference_graphs: Mapping[str, tuple[nn.Module, tuple[torch.Tensor, ...]]],
    teacher: Mapping[str, AutoencoderPart],
    options: StudentOptions,
    export_graph: ExportGraph,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Gate the staged ``bundle`` (its manifest written) against the teacher's; returns the manifest with the report.

    Raises:
        StudentGateError: a gated metric worsened beyond ``options.max_drop`` and not ``options.force``.
    """
    say = log or (lambda message: None)
    say(f"staging the reference bundle (the full VAE's {', '.join(reference_graphs)})")
    reference = stage_reference(bundle, manifest, reference_graphs, teacher, export_graph)
    try:
        report, failures = gate_student_bundle(
            reference, bundle, options.max_drop, eval_scenes=options.gate_scenes,
            eval_steps=options.gate_steps or manifest.sampler.num_steps, data=options.gate_data,
            frames=options.gate_frames, speed_frames=options.speed_frames, threads=options.threads,
            progress=progress, log=say,
        )  # fmt: skip
    finally:
        shutil.rmtree(reference, ignore_errors=True)
    report["students"] = list(manifest.vae.students)
    report["forced"] = bool(failures) and options.force
    if failures and not options.force:
        raise StudentGateError(failures, report)
    return manifest.model_copy(update={"vae": manifest.vae.model_copy(update={"gate": _plain(report)})})


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars to float) for the manifest."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
