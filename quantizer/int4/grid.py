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


def asym_params(w: torch.Tensor, dtype: torch.dtype, shrink: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `w` ([N, g] or [N, K/g, g] on the last dim), rounded to `dtype`; with
    `shrink` < 1 the range min..max is shrunk towards zero by that factor (the values beyond it are clipped)."""
    low, high = w.amin(-1), w.amax(-1)
    scale = ((high - low) * shrink / (QMAX - QMIN)).clamp(min=1e-8).to(dtype)
    zero = (QMIN - low * shrink / scale.float()).to(dtype)
    return scale, zero


CLIP_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # ranges tried by the clipping search, as fractions of min..max


def clipped_params(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`asym_params` with the factor of CLIP_SHRINKS that gives each group the least squared rounding error:
    clipping a few outliers buys finer steps for the rest (GPTQ's `mse` option)."""
    best_scale = best_zero = best_error = None
    for shrink in CLIP_SHRINKS:
        scale, zero = asym_params(w, dtype, shrink)
        q = round_to_grid(w, scale.unsqueeze(-1), zero.unsqueeze(-1))
        error = ((q - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1) - w).pow(2).sum(-1)
        if best_error is None:
            best_scale, best_zero, best_error = scale, zero, error
            continue
        better = error < best_error
        best_scale, best_zero = torch.where(better, scale, best_scale), torch.where(better, zero, best_zero)
        best_error = torch.minimum(error, best_error)
    return best_scale, best_zero


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
