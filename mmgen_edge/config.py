"""The MMGen model configuration: the one typed description of an architecture (torch-free, shared by export and runtime).

A :class:`ModelConfig` is written to ``config.json`` of a converted model directory and (later) embedded
in the bundle manifest; everything downstream reads shapes and modality order from it.
"""

from __future__ import annotations

import re
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from mmgen_edge.runtime.modalities import MIN_MASK_COLOUR_DISTANCE, RELEASE_MODALITIES

#: SiT size presets of the release (spec table): name -> (depth, hidden size, heads).
SIZE_PRESETS: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
}
PATCH_SIZES: tuple[int, ...] = (2, 4, 8)
#: Most latent tokens x hidden width (the sin-cos position embedding is built at that size in float64: 2 GiB at the
#: bound; SiT-XL/2 at 256 px is 256 x 1152). Together with the per-field bounds below, a config (or a checkpoint's
#: args) declaring an absurd size is refused before anything is allocated.
MAX_TOKEN_WIDTH = 2**28
_MODEL_NAME = re.compile(r"^SiT-(XL|L|B|S)/(2|4|8)$")


class ModelConfig(BaseModel):
    """Architecture of one MMGen transformer (SiT with the multi-modal extensions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("custom", description='Preset name such as "SiT-XL/2", or "custom".')
    depth: int = Field(gt=0, le=256)
    hidden_size: int = Field(gt=0, le=16384)
    num_heads: int = Field(gt=0, le=256)
    patch_size: int = Field(gt=0, le=64)
    resolution: int = Field(gt=0, le=8192, description="Image size in pixels (square).")
    vae_downsample: int = Field(8, gt=0, le=64, description="Pixels per latent cell of the VAE.")
    latent_channels: int = Field(4, gt=0, le=64, description="Latent channels per modality.")
    modalities: tuple[str, ...] = RELEASE_MODALITIES
    num_classes: int = Field(1000, gt=0, le=2**20, description="Class labels; index num_classes is the null label.")
    mlp_ratio: float = Field(4.0, gt=0, le=64, allow_inf_nan=False)
    qk_norm: bool = False
    encoder_depth: int = Field(8, ge=0, le=256, description="Block after which the REPA projector reads (training only).")
    projector_dim: int | None = Field(2048, gt=0, le=65536, description="REPA projector width; None when the file has no projector.")
    z_dim: int | None = Field(768, gt=0, le=65536, description="REPA projector output width.")
    mask_palette: tuple[tuple[StrictInt, StrictInt, StrictInt], ...] | None = Field(
        None,
        description="Mask colours the model was trained with, in paint order: the background, then the segments "
                    "largest first (segments beyond the palette get random colours). None: a random colour each, as "
                    "the release paints its masks.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos position embedding)")
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must be even (timestep MLP outputs hidden_size/2)")
        if self.resolution % self.vae_downsample:
            raise ValueError(f"resolution {self.resolution} is not a multiple of vae_downsample {self.vae_downsample}")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent size {self.latent_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_tokens * self.hidden_size > MAX_TOKEN_WIDTH:
            raise ValueError(
                f"{self.num_tokens} tokens x hidden_size {self.hidden_size} is over {MAX_TOKEN_WIDTH} (a larger "
                "patch, a smaller resolution or a narrower model fits)"
            )
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"modalities must be distinct and non-empty, got {self.modalities}")
        unknown = [m for m in self.modalities if m not in RELEASE_MODALITIES]
        if unknown:  # the runtime, SDK and serving read maps by these names
            raise ValueError(f"unknown modalities {unknown}: each must be one of {', '.join(RELEASE_MODALITIES)}")
        if self.mask_palette is not None:
            check_mask_palette(self.mask_palette)
        if (self.projector_dim is None) != (self.z_dim is None):
            raise ValueError("projector_dim and z_dim must both be set or both be None")
        return self

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_tasks(self) -> int:
        """Task indices: 0 = joint generation, k + 1 = modality k is the clean condition."""
        return self.num_modalities + 1

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_downsample

    @property
    def in_channels(self) -> int:
        return self.latent_channels * self.num_modalities

    @property
    def num_tokens(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def null_label(self) -> int:
        return self.num_classes

    def modality_index(self, name: str) -> int:
        if name not in self.modalities:
            raise ValueError(f"unknown modality {name!r}; this model has {list(self.modalities)}")
        return self.modalities.index(name)


#: Most colours a mask palette may list (the pairwise check is quadratic; 64 apart, few more fit in RGB anyway).
MAX_PALETTE_COLOURS = 256


def check_mask_palette(palette: object) -> tuple[tuple[int, int, int], ...]:
    """A mask palette as a tuple of RGB triples; ValueError unless it has 2..``MAX_PALETTE_COLOURS`` colours of
    integers in 0..255, each at least ``MIN_MASK_COLOUR_DISTANCE`` from every other (a decoder merges closer colours
    into one segment)."""
    if not isinstance(palette, (list, tuple)) or len(palette) < 2:
        raise ValueError(f"mask_palette must list at least 2 colours (background first), got {palette!r}")
    if len(palette) > MAX_PALETTE_COLOURS:
        raise ValueError(f"mask_palette lists {len(palette)} colours, more than {MAX_PALETTE_COLOURS}")
    colours = []
    for colour in palette:
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
            raise ValueError(f"mask_palette colours must be 3 integers in 0..255, got {colour!r}")
        colours.append(tuple(colour))
    for i, a in enumerate(colours):
        for b in colours[:i]:
            if sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5 < MIN_MASK_COLOUR_DISTANCE:
                raise ValueError(f"mask_palette colours {b} and {a} are closer than {MIN_MASK_COLOUR_DISTANCE:g}")
    return tuple(colours)  # type: ignore[return-value]


def preset(name: str, resolution: int = 256, **overrides: object) -> ModelConfig:
    """Config of a release size preset, e.g. ``preset("SiT-XL/2")`` (the released model at 256 px)."""
    match = _MODEL_NAME.match(name)
    if not match:
        names = [f"SiT-{s}/{p}" for s in SIZE_PRESETS for p in PATCH_SIZES]
        raise ValueError(f"unknown model {name!r}; expected one of {names}")
    depth, hidden, heads = SIZE_PRESETS[match.group(1)]
    fields: dict[str, object] = dict(
        name=name, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(match.group(2)), resolution=resolution
    )
    if any(k in overrides and overrides[k] != fields[k] for k in ("depth", "hidden_size", "num_heads", "patch_size")):
        fields["name"] = "custom"  # sizes overridden: no longer the named preset
    fields.update(overrides)
    return ModelConfig(**fields)
