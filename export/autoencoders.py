"""The two autoencoder families a bundle can carry, behind one latent convention (the bundle's latent space).

    vae = load_autoencoder("models/taesd")                  # diffusers AutoencoderKL or AutoencoderTiny directory
    z = encode_latent(vae, image)                           # image (N,3,H,W) in [-1,1] -> bundle latent (N,4,h,w)
    x = decode_latent(vae, z, size=256)                     # bundle latent -> image (N,3,size,size) in [-1,1]

The bundle's latent is the teacher ``AutoencoderKL``'s scaled posterior mean (``latent = mean * scaling_factor``,
0.18215 for the SD VAE). diffusers' convention for both families is ``pipeline latent = (raw - shift_factor) *
scaling_factor``; an ``AutoencoderTiny`` (TAESD) has ``scaling_factor`` 1.0 because its raw latents *are* the SD
VAE's scaled latents, and it works in [0, 1] inside while its ``encode`` / ``decode`` take and give [-1, 1]. Both
differences are handled here, so the exported graphs have the same inputs and outputs whatever the family, and no
caller scales anything. A student decoder that decodes below the model resolution (fewer upsampling stages) is
resized to it (bilinear) inside the graph: the smooth perception maps lose little, the decoder saves its
full-resolution convolutions.
"""

from __future__ import annotations

import math

import json
import os
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

Autoencoder = Union[AutoencoderKL, AutoencoderTiny]
#: The diffusers classes a bundle's VAE graphs can come from, by their ``config.json`` ``_class_name``.
AUTOENCODER_CLASSES: dict[str, type] = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}


def autoencoder_class_name(directory: str | os.PathLike[str]) -> str:
    """The ``_class_name`` of a diffusers directory, checked to be one of :data:`AUTOENCODER_CLASSES`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a diffusers autoencoder directory: config.json is missing")
    try:
        name = json.loads(path.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a diffusers config (not a JSON object with _class_name)") from None
    if name not in AUTOENCODER_CLASSES:
        raise ValueError(f"{directory} holds a {name!r}; a bundle's VAE graphs take one of {sorted(AUTOENCODER_CLASSES)}")
    return name


#: Bounds of the size fields of an autoencoder config, checked before diffusers builds the model from it (a config
#: declaring ``layers_per_block: 100000`` took 100 s and 5 GB before failing): channel widths, block and layer counts,
#: list lengths.
MAX_CONFIG_CHANNELS = 4096
MAX_CONFIG_COUNT = 64
MAX_CONFIG_LIST = 16
_CHANNEL_FIELDS = ("block_out_channels", "encoder_block_out_channels", "decoder_block_out_channels", "in_channels",
                   "out_channels", "latent_channels", "norm_num_groups")  # fmt: skip
_COUNT_FIELDS = ("layers_per_block", "upsampling_scaling_factor")
_BLOCK_FIELDS = ("num_encoder_blocks", "num_decoder_blocks")  # 0: a stage without blocks (distill-vae allows it)


def check_autoencoder_config(directory: str | os.PathLike[str]) -> None:
    """Refuse a diffusers autoencoder config whose sizes are out of :data:`MAX_CONFIG_CHANNELS` /
    :data:`MAX_CONFIG_COUNT` / :data:`MAX_CONFIG_LIST` bounds (or not integers), naming the field."""
    from mmgen_edge.runtime.manifest import shortened

    path = Path(directory) / "config.json"
    config = json.loads(path.read_text())
    ranges = ((_CHANNEL_FIELDS, 1, MAX_CONFIG_CHANNELS), (_COUNT_FIELDS, 1, MAX_CONFIG_COUNT), (_BLOCK_FIELDS, 0, MAX_CONFIG_COUNT))
    for fields, low, bound in ranges:
        for field in fields:
            if field not in config or config[field] is None:
                continue
            value = config[field]
            values = value if isinstance(value, list) else [value]
            if len(values) > MAX_CONFIG_LIST or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= bound for v in values
            ):
                kind = f"a list of at most {MAX_CONFIG_LIST} integers" if isinstance(value, list) else "an integer"
                raise ValueError(f"{path}: {field} must be {kind} in {low}..{bound}, got {shortened(repr(value))}")


def load_autoencoder(directory: str | os.PathLike[str], expect: str | None = None, label: str | None = None) -> Autoencoder:
    """Load a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` directory (fp32, eval mode).

    Args:
        directory: the diffusers directory (``config.json`` + weights).
        expect: when given, the class it must be (e.g. the teacher must be an ``AutoencoderKL``).
        label: what the directory is, for the message naming a NaN/Inf tensor (default ``"VAE <directory>"``).

    Raises:
        ValueError: not a diffusers autoencoder directory, the wrong class, unreadable weights, or weights that hold
            NaN/Inf (``NonFiniteWeightsError``, naming the tensors).
    """
    from .finite import check_finite

    name = autoencoder_class_name(directory)
    if expect is not None and name != expect:
        raise ValueError(f"{directory} holds a {name}, expected a {expect}")
    check_autoencoder_config(directory)
    try:
        vae = AUTOENCODER_CLASSES[name].from_pretrained(directory, low_cpu_mem_usage=False)
    except Exception as e:  # diffusers / safetensors: missing, empty or truncated weights
        raise ValueError(f"{directory}: cannot load the {name} weights ({type(e).__name__}: {e})") from None
    check_finite(vae.state_dict(), label or f"VAE {directory}")
    scale, shift = float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(shift)):
        raise ValueError(
            f"{directory}/config.json: scaling_factor must be a finite number > 0 and shift_factor finite, got "
            f"{vae.config.scaling_factor!r} and {getattr(vae.config, 'shift_factor', None)!r} (latents would be "
            "NaN or Inf)"
        )
    return vae.float().eval()


def _scale_shift(vae: Autoencoder) -> tuple[float, float]:
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


def encode_latent(vae: Autoencoder, image: torch.Tensor) -> torch.Tensor:
    """Image (N, 3, H, W) in [-1, 1] -> the bundle latent (N, C, H/f, W/f): posterior mean for ``AutoencoderKL``."""
    scale, shift = _scale_shift(vae)
    if isinstance(vae, AutoencoderTiny):
        raw = vae.encode(image).latents
    else:
        raw = vae.encode(image).latent_dist.mean
    return (raw - shift) * scale


def decode_latent(vae: Autoencoder, latent: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Bundle latent (N, C, h, w) -> image (N, 3, size, size) in [-1, 1], clamped.

    ``size``: the image side the bundle expects; a decoder whose output is smaller is resized to it (bilinear).
    """
    scale, shift = _scale_shift(vae)
    image = vae.decode(latent / scale + shift).sample
    if size is not None and tuple(image.shape[-2:]) != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    return image.clamp(-1.0, 1.0)


def decoder_upsampling(vae: Autoencoder) -> int:
    """Image pixels per latent cell of the decoder's own output (before any resize)."""
    if isinstance(vae, AutoencoderTiny):
        stages = len(vae.config.num_decoder_blocks) - 1
        return int(vae.config.upsampling_scaling_factor) ** stages
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encoder_downsampling(vae: Autoencoder) -> int:
    """Image pixels per latent cell of the encoder."""
    if isinstance(vae, AutoencoderTiny):
        return 2 ** (len(vae.config.num_encoder_blocks) - 1)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def part_parameters(vae: Autoencoder, part: str) -> int:
    """Parameters of the ``encoder`` or ``decoder`` half (with its quant / post-quant conv for ``AutoencoderKL``)."""
    modules = [getattr(vae, part)]
    extra = {"encoder": "quant_conv", "decoder": "post_quant_conv"}[part]
    if getattr(vae, extra, None) is not None:
        modules.append(getattr(vae, extra))
    return sum(p.numel() for m in modules for p in m.parameters())
