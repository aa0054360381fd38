"""The asymmetric 4-bit grid that the calibrated methods share: per group a scale and a float zero point.

Values are int8 in [-8, 7]; a weight is `(q - zero) * scale` (the tinygemm convention with the
grid shifted by 8). Both storage formats can hold these values (see `formats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QMIN, QMAX = -8, 7


@dataclass(frozen=True)
class GroupQuant:
    """One Linear's int4 weights: qdata int8 in [-8, 7], per-group scale and float zero point."""

    qdata: torch.Tensor  # [N, K] int8
    scale: torch.Tensor  # [N, K // g]
    zero_point: torch.Tensor  # [N, K // g], float

    def dequantize(self, group_size: int) -> torch.Tensor:
        s = self.scale.float().repeat_interleave(group_size, dim=1)
        z = self.zero_point.float().repeat_interleave(group_size, dim=1)
        return (self.qdata.float() - z) * s


def asym_params(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `w` ([N, g] or [N, K/g, g] on the last dim), rounded to `dtype`."""
    low, high = w.amin(-1), w.amax(-1)
    scale = ((high - low) / (QMAX - QMIN)).clamp(min=1e-8).to(dtype)
    zero = (QMIN - low / scale.float()).to(dtype)
    return scale, zero


def round_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale.float() + zero.float()), QMIN, QMAX)


def quantize_asym(weight: torch.Tensor, group_size: int) -> GroupQuant:
    """Round-to-nearest on the asymmetric grid, group by group."""
    w = weight.float()
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    scale, zero = asym_params(groups, weight.dtype)
    q = round_to_grid(groups, scale.unsqueeze(-1), zero.unsqueeze(-1))
    return GroupQuant(q.to(torch.int8).reshape(n, k), scale, zero)
