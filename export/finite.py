"""Refuse weights that hold NaN or Inf before they are written anywhere (they give black images, not errors).

Checked tensor by tensor, in bounded chunks, so a memory-mapped 2.8 GB state dict is read once and never copied
whole: the largest temporary is one chunk's boolean mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

#: Elements checked at once (a 16 MB boolean mask at most).
CHUNK_ELEMENTS = 1 << 24


class NonFiniteWeightsError(ValueError):
    """Some weights are NaN or infinite; the message names each tensor and its counts."""


@dataclass(frozen=True)
class NonFiniteTensor:
    """One tensor holding non-finite values."""

    name: str
    nan: int
    inf: int
    numel: int

    def describe(self) -> str:
        return f"{self.name} ({self.nan} NaN, {self.inf} Inf of {self.numel:,} values)"


def count_nonfinite(tensor: torch.Tensor) -> tuple[int, int]:
    """(NaN count, Inf count) of ``tensor``, read in chunks of :data:`CHUNK_ELEMENTS`.

    Args:
        tensor: any tensor; integer tensors are finite by definition.

    Returns:
        The number of NaN and of infinite values.
    """
    if not tensor.is_floating_point():
        return 0, 0
    flat = tensor.detach().reshape(-1)  # a view for the contiguous (memory-mapped) weights
    nan = inf = 0
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        if bool(torch.isfinite(chunk).all()):
            continue
        nan += int(torch.isnan(chunk).sum())
        inf += int(torch.isinf(chunk).sum())
    return nan, inf


def find_nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[NonFiniteTensor]:
    """Every tensor of ``tensors`` that holds NaN or Inf, in name order.

    Args:
        tensors: a state dict (memory-mapped tensors are read once, chunk by chunk).

    Returns:
        The offending tensors with their counts; empty when all values are finite.
    """
    found = []
    for name in sorted(tensors):
        nan, inf = count_nonfinite(tensors[name])
        if nan or inf:
            found.append(NonFiniteTensor(name, nan, inf, tensors[name].numel()))
    return found


def check_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming every tensor of ``tensors`` that holds NaN or Inf.

    Args:
        tensors: the weights to check.
        source: what they are, for the message (e.g. ``"checkpoint ck.pt (ema weights)"``).

    Raises:
        NonFiniteWeightsError: at least one value is NaN or infinite.
    """
    found = find_nonfinite(tensors)
    if found:
        shown = "; ".join(t.describe() for t in found[:8])
        more = f"; and {len(found) - 8} more" if len(found) > 8 else ""
        raise NonFiniteWeightsError(
            f"{source} has non-finite weights in {len(found)} of {len(tensors)} tensors: {shown}{more}. "
            "A model with NaN/Inf weights produces black images; re-export the weights from a healthy "
            "checkpoint (for training checkpoints, try the other weights: --weights model / ema)"
        )
