"""A converted model directory: ``config.json`` (pydantic) + ``model.safetensors``.

This is what ``mmgen-edge convert`` writes and what export, training and evaluation read. Directories are written
atomically (temporary directory, then rename), so an interrupted write never leaves one that loads.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from mmgen_edge import __version__
from mmgen_edge.runtime.fileio import atomic_directory

from mmgen_edge.config import ModelConfig
from .finite import NonFiniteWeightsError, count_nonfinite
from .model import MMGen

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "mmgen-edge-model"
FORMAT_VERSION = 1


class WeightsDType(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {WeightsDType.FP32: torch.float32, WeightsDType.FP16: torch.float16}[self]


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = None  # file name of the source checkpoint
    source_sha256: str | None = None
    release: str | None = None  # "0600000.pt" / "0620000.pt" when the source is a known release file
    weights: str = "ema"  # which weights of the checkpoint: ema | model | trained
    train_steps: int | None = None
    created: str = ""
    exporter_version: str = __version__


class ModelDirConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["mmgen-edge-model"] = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    model: ModelConfig
    dtype: WeightsDType = WeightsDType.FP32
    provenance: Provenance = Provenance()


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype, progress: bool = False
) -> int:
    """Write ``tensors`` cast to ``dtype`` as a safetensors file, one tensor at a time; returns the bytes written.

    ``safetensors.torch.save_file`` first serialises every tensor into memory, which doubles peak RAM for a
    memory-mapped 2.8 GB EMA state. This writes the same format (8-byte little-endian header length, JSON header,
    raw little-endian data; read back with ``safetensors``) while holding one tensor at a time.
    """
    tag = _SAFETENSORS_DTYPES[dtype]
    names = sorted(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        nbytes = tensors[name].numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": tag, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f, tqdm(
        total=offset, unit="B", unit_scale=True, desc=f"write {path.name}", disable=not progress, leave=False
    ) as bar:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            tensor = tensors[name].detach().to("cpu", dtype).contiguous()
            if tensor.dtype != tensors[name].dtype:
                _check_cast_is_finite(name, tensor, tensors[name])
            data = tensor.view(torch.uint8) if tensor.dim() else tensor.reshape(1).view(torch.uint8)
            f.write(memoryview(data.numpy()))
            bar.update(data.numel())
    return 8 + len(blob) + offset


def _check_cast_is_finite(name: str, cast: torch.Tensor, source: torch.Tensor) -> None:
    """Refuse a cast that turned finite weights into Inf (fp32 values beyond fp16's range)."""
    nan, inf = count_nonfinite(cast)
    if not (nan or inf):
        return
    before = count_nonfinite(source)
    if (nan, inf) != before:
        largest = float(source.detach().abs().max())
        raise NonFiniteWeightsError(
            f"weight {name} does not fit {cast.dtype}: {inf - before[1]} values overflow to Inf (largest |value| "
            f"{largest:.4g}, {cast.dtype} max {torch.finfo(cast.dtype).max:.4g}); store it as fp32 (--dtype fp32)"
        )


def save_model_dir(
    out_dir: str | os.PathLike[str],
    config: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    dtype: WeightsDType | str = WeightsDType.FP32,
    provenance: Provenance | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically; returns the directory."""
    dtype = WeightsDType(dtype)
    provenance = provenance or Provenance()
    if not provenance.created:
        provenance = provenance.model_copy(update={"created": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    meta = ModelDirConfig(model=config, dtype=dtype, provenance=provenance)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, state_dict, dtype.torch_dtype, progress=progress)
        (tmp / CONFIG_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
    return Path(out_dir)


def read_model_dir_config(model_dir: str | os.PathLike[str]) -> ModelDirConfig:
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory: {CONFIG_FILE} is missing")
    try:
        meta = ModelDirConfig.model_validate_json(path.read_text())
    except ValidationError as e:
        from mmgen_edge.runtime.manifest import describe_validation_error

        raise ValueError(f"{path} is not a valid model config: {describe_validation_error(e)}") from None
    if meta.format_version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {meta.format_version}; this mmgen-edge ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade mmgen-edge"
        )
    return meta


def load_model(
    model_dir: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MMGen:
    """Load a converted model directory into an :class:`MMGen` in eval mode (strict: every key must match).

    ``dtype=None`` keeps the stored precision.
    """
    model_dir = Path(model_dir)
    meta = read_model_dir_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model directory: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors' SafetensorError: a truncated file, a bad header
        raise ValueError(f"{weights} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    from .checkpoint import check_state_dict  # (checkpoint imports this module)

    with torch.device("meta"):
        model = MMGen(meta.model)
    check_state_dict(meta.model, state, model)  # names the first few mismatches in one line, allocating nothing
    stored = meta.dtype.torch_dtype
    other = sorted(k for k, v in state.items() if v.dtype != stored)
    if other:  # an edited config.json (or weights swapped in): the recorded dtype is what provenance and hashes mean
        raise ValueError(
            f"{weights}: config.json says {meta.dtype.value}, but {len(other)} tensor(s) are stored otherwise "
            f"({other[0]}: {state[other[0]].dtype}); convert the checkpoint again"
        )
    model.load_state_dict(state, strict=True, assign=True)
    target = dtype or meta.dtype.torch_dtype
    return model.to(device=device, dtype=target).eval()
