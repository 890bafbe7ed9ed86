"""Import an official MMGen training checkpoint (``0600000.pt`` / ``0620000.pt``) or one of the same layout.

The file is a ``torch.save`` of ``{"model", "ema", "opt", "args", "steps"}`` (about 11 GB, optimizer included).
It is opened with ``weights_only=True`` (only ``argparse.Namespace`` is allowed besides tensors and plain
containers, so a pickle that tries to run code is refused before anything runs) and memory-mapped, so only the
chosen weights are ever read: peak RAM stays near the EMA weights' size, not the file's.
"""

from __future__ import annotations

import argparse
import enum
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmgen_edge.runtime.fileio import check_output_directory, sha256_file

from mmgen_edge.config import ModelConfig, preset
from .finite import NonFiniteWeightsError, check_finite
from .model import MMGen, count_parameters
from .model_dir import Provenance, WeightsDType, save_model_dir


@dataclass(frozen=True)
class ReleaseFile:
    name: str
    description: str
    size: int
    sha256: str


#: The two released checkpoints (spec), by SHA-256.
RELEASE_FILES: dict[str, ReleaseFile] = {
    r.sha256: r
    for r in (
        ReleaseFile(
            "0600000.pt",
            "base four-task model, ImageNet-derived modalities",
            11_112_542_326,
            "7ea94acea622134dc2f94b704b7d657f34861d6ac4450cb341e9c1bfb280877e",
        ),
        ReleaseFile(
            "0620000.pt",
            "fine-tuned on Hypersim for RGB -> depth/normal/mask",
            11_112_546_899,
            "ab4c9423ed55ad0b845815dcf59d68d5e12265b846682065c858fc67f39be0ba",
        ),
    )
}

REQUIRED_ARGS = (
    "model", "resolution", "num_tasks", "is_mmcat_diff", "use_decouple_task", "use_taskcond_emb",
    "use_decouple_latent", "num_classes", "cfg_prob", "encoder_depth", "qk_norm", "path_type",
)  # fmt: skip
#: Flags whose value must be exactly the release's, with the reason printed when it is not.
FIXED_ARGS: dict[str, tuple[object, str]] = {
    "num_tasks": (4, "the model has exactly four modalities (rgb, depth, normal, mask)"),
    "is_mmcat_diff": (True, "modalities must be concatenated on channels"),
    "use_decouple_task": (True, "timesteps must be decoupled per modality"),
    "use_taskcond_emb": (True, "the task-condition embedding is required"),
    "use_decouple_latent": (False, "decoupled latents are not part of the released architecture"),
    "path_type": ("linear", "only the linear interpolant is supported"),
}
CHECKPOINT_KEYS = ("model", "ema", "args")
#: Optional args (not in the release) with which our own checkpoints override the preset's sizes.
CUSTOM_SIZE_ARGS = ("depth", "hidden_size", "num_heads", "patch_size")


class CheckpointError(ValueError):
    """The checkpoint cannot be imported; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for code or objects outside the weights-only allow-list; nothing of it was run."""


class Weights(str, enum.Enum):
    EMA = "ema"
    MODEL = "model"


class Sha256Mode(str, enum.Enum):
    AUTO = "auto"  # hash, and name the release file if it is one
    SKIP = "skip"


@dataclass
class ImportedCheckpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # memory-mapped tensors of the chosen weights
    weights: Weights
    sha256: str | None
    release: ReleaseFile | None
    train_steps: int | None
    args: dict[str, Any]


def _open_checkpoint(path: Path) -> Mapping[str, Any]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path} was refused: its pickle asks for something other than tensors, plain containers and "
            f"argparse.Namespace, so it may run code. Nothing from it was executed. ({str(e).splitlines()[0]})"
        ) from None
    except RuntimeError as e:
        text = str(e)
        if "zip archive" in text or "central directory" in text:
            raise CheckpointError(
                f"{path} is truncated or not a torch checkpoint ({os.path.getsize(path):,} bytes; {text.splitlines()[0]})."
                " If it was downloaded, download it again."
            ) from None
        if "mmap" in text:
            raise CheckpointError(
                f"{path} uses torch's legacy (non-zip) format, which cannot be memory-mapped; re-save it with a "
                "current torch.save"
            ) from None
        raise
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a training checkpoint dict")
    return ckpt


def _args_dict(args: object) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, Mapping):
        return dict(args)
    raise CheckpointError(f"checkpoint 'args' is a {type(args).__name__}; expected a dict or argparse.Namespace")


def projector_shape(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """(projector_dim, z_dim) of the REPA projector, read off the weights' shapes; None without one."""
    if any(k.startswith("projectors.1.") for k in state_dict):
        raise CheckpointError("unsupported checkpoint: more than one REPA projector")
    if "projectors.0.0.weight" not in state_dict:
        return None
    shapes = {k: tuple(getattr(state_dict.get(k), "shape", ())) for k in ("projectors.0.0.weight", "projectors.0.4.weight")}
    bad = [f"{k} {'missing' if k not in state_dict else f'has shape {s}'}" for k, s in shapes.items() if len(s) != 2]
    if bad:
        raise CheckpointError(f"the REPA projector is malformed: {', '.join(bad)} (expected 2-D Linear weights)")
    return shapes["projectors.0.0.weight"][0], shapes["projectors.0.4.weight"][0]


def _integer_arg(args: Mapping[str, Any], key: str) -> int:
    """``args[key]`` as an int: an integer (or an integral float, as argparse may store), never a truncated 32.9."""
    value = args[key]
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise CheckpointError(f"unsupported checkpoint args: args.{key} must be an integer, got {value!r}")
    return int(value)


def architecture_from_args(args: Mapping[str, Any], projector: tuple[int, int] | None) -> ModelConfig:
    """The model config from the training args and the REPA projector's (projector_dim, z_dim)."""
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        raise CheckpointError(f"checkpoint args lack {missing}: not an MMGen training checkpoint")
    for key, (expected, why) in FIXED_ARGS.items():
        if args[key] != expected:
            raise CheckpointError(f"unsupported checkpoint: args.{key} = {args[key]!r} (must be {expected!r}: {why})")
    if not float(args["cfg_prob"]) > 0:
        raise CheckpointError("unsupported checkpoint: args.cfg_prob = 0, so the model has no null label for guidance")
    projector_dim, z_dim = projector if projector is not None else (None, None)
    # mmgen-edge extension for our own checkpoints: explicit sizes override the preset named by args.model.
    overrides: dict[str, object] = {k: _integer_arg(args, k) for k in CUSTOM_SIZE_ARGS if args.get(k) is not None}
    # ... and the mask colours they were trained with (``ModelConfig.mask_palette``; the release paints at random).
    if args.get("mask_palette") is not None:
        overrides["mask_palette"] = args["mask_palette"]
    try:
        return preset(
            str(args["model"]),
            resolution=_integer_arg(args, "resolution"),
            num_classes=_integer_arg(args, "num_classes"),
            qk_norm=bool(args["qk_norm"]),
            encoder_depth=_integer_arg(args, "encoder_depth"),
            projector_dim=projector_dim,
            z_dim=z_dim,
            **overrides,
        )
    except ValueError as e:
        from pydantic import ValidationError

        from mmgen_edge.runtime.manifest import describe_validation_error

        detail = describe_validation_error(e) if isinstance(e, ValidationError) else str(e)
        raise CheckpointError(f"unsupported checkpoint args: {detail}") from None


def check_state_dict(config: ModelConfig, state_dict: Mapping[str, torch.Tensor], model: MMGen | None = None) -> None:
    """Strict key/shape check against the architecture without allocating any weights (``model``: the config's model
    on the meta device when the caller has built it already)."""
    if model is None:
        with torch.device("meta"):
            model = MMGen(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"weights do not match {config.name}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shape mismatch {wrong[:5]}"
        )
    not_float = [k for k, v in state_dict.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"non-floating-point weights: {not_float[:5]}")


def identify(path: Path, sha256: str, progress: bool = False) -> tuple[str | None, ReleaseFile | None]:
    """Hash the file according to ``sha256`` ("auto", "skip" or an expected hex digest) and name the release."""
    mode = sha256.lower()
    if mode == Sha256Mode.SKIP.value:
        return None, None
    digest = sha256_file(path, progress=progress)
    release = RELEASE_FILES.get(digest)
    if mode == Sha256Mode.AUTO.value:
        size = path.stat().st_size
        lookalike = next((r for r in RELEASE_FILES.values() if r.size == size), None)
        if release is None and lookalike is not None:
            raise CheckpointError(
                f"{path} has the size of the release file {lookalike.name} but not its SHA-256 ({digest}): "
                "the download is probably corrupt. Download it again, or pass --sha256 skip to import it anyway."
            )
        return digest, release
    if len(mode) != 64 or any(c not in "0123456789abcdef" for c in mode):
        raise CheckpointError(f"--sha256 must be 'auto', 'skip' or a 64-digit hex SHA-256, got {sha256!r}")
    if digest != mode:
        raise CheckpointError(f"SHA-256 mismatch for {path}: expected {mode}, file has {digest}")
    return digest, release


def import_checkpoint(
    path: str | os.PathLike[str], weights: Weights | str = Weights.EMA, sha256: str = "auto", progress: bool = False
) -> ImportedCheckpoint:
    """Open, verify and validate a release-layout checkpoint. The returned tensors are memory-mapped.

    Validation: the args name a supported architecture, the weights match it key by key and shape by shape, and
    every value is finite (NaN/Inf weights are refused with the tensor's name, see :mod:`.finite`).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint file inside it (e.g. {path}/0600000.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    weights = Weights(weights)
    digest, release = identify(path, sha256, progress=progress)
    ckpt = _open_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; a release checkpoint has keys model, ema, opt, args, steps")
    state_dict = ckpt[weights.value]
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: '{weights.value}' is not a state dict of tensors")
    state_dict = dict(state_dict)
    args = _args_dict(ckpt["args"])
    config = architecture_from_args(args, projector_shape(state_dict))
    check_state_dict(config, state_dict)
    try:  # read chunk by chunk from the memory map; the pages stay shared with the writer's later read
        check_finite(state_dict, f"checkpoint {path} ({weights.value} weights)")
    except NonFiniteWeightsError as e:
        raise CheckpointError(str(e)) from None
    steps = ckpt.get("steps")
    return ImportedCheckpoint(
        config=config,
        state_dict=state_dict,
        weights=weights,
        sha256=digest,
        release=release,
        train_steps=int(steps) if isinstance(steps, int) else None,
        args=args,
    )


@dataclass
class ConversionSummary:
    out_dir: Path
    config: ModelConfig
    parameters: int
    inference_parameters: int
    release: ReleaseFile | None
    sha256: str | None
    weights: Weights
    dtype: WeightsDType
    bytes_written: int

    def lines(self) -> list[str]:
        c = self.config
        return [
            f"model        {c.name}: depth {c.depth}, hidden {c.hidden_size}, heads {c.num_heads}, patch {c.patch_size}, "
            f"{c.resolution} px ({c.latent_size}x{c.latent_size} latents, {c.num_tokens} tokens), qk_norm {c.qk_norm}",
            f"parameters   {self.parameters:,} ({self.inference_parameters:,} without the REPA projector)",
            f"weights      {self.weights.value} as {self.dtype.value}, {self.bytes_written / 1e6:,.1f} MB",
            f"source       {'release ' + self.release.name + ' (' + self.release.description + ')' if self.release else 'not a release file'}"
            f"{', sha256 ' + self.sha256 if self.sha256 else ', sha256 not checked'}",
            f"written to   {self.out_dir}",
        ]


def convert_checkpoint(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    weights: Weights | str = Weights.EMA,
    sha256: str = "auto",
    dtype: WeightsDType | str = WeightsDType.FP32,
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Import ``path`` and write a model directory (``config.json`` + ``model.safetensors``) atomically."""
    check_output_directory(out_dir, overwrite, protect=(path,))  # fail before hashing 11 GB
    imported = import_checkpoint(path, weights=weights, sha256=sha256, progress=progress)
    dtype = WeightsDType(dtype)
    provenance = Provenance(
        source=Path(path).name,
        source_sha256=imported.sha256,
        release=imported.release.name if imported.release else None,
        weights=imported.weights.value,
        train_steps=imported.train_steps,
    )
    out = save_model_dir(out_dir, imported.config, imported.state_dict, dtype, provenance, overwrite, progress)
    with torch.device("meta"):
        model = MMGen(imported.config)
    return ConversionSummary(
        out_dir=out,
        config=imported.config,
        parameters=count_parameters(model),
        inference_parameters=count_parameters(model, include_projector=False),
        release=imported.release,
        sha256=imported.sha256,
        weights=imported.weights,
        dtype=dtype,
        bytes_written=(out / "model.safetensors").stat().st_size,
    )
