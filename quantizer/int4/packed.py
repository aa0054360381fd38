"""Truly 4-bit int4 for CUDA, written on any machine: torchao's tile-packed format (Int4TilePackedTo4dTensor).

On a GPU torchao makes it itself. On a CPU we use torchao's own tinygemm qparams functions (plain
tensor code), pack the 4-bit values with a CPU implementation of the CUDA packer's layout
(`torch.ops.aten._convert_weight_to_int4pack`, NVIDIA branch), and build the tensor with its
constructor. The layout (shared/docs/int4-packed.md): qdata int32 [N/8, K/128, 32, 4]; word
[n_tile, k_outer, t, j] holds row n_tile*8 + t//4, and with c = t % 4 the k positions
base + 2c + e + 8h of two consecutive 16-wide k tiles (base = k_outer*128 + j*32 + 16*tile), in
nibble e*4 + tile*2 + h.

`unpack` is a separate, literal port of torchao's CUDA unpack kernel (index arithmetic per thread
and inner k tile), so checking pack against it is an independent check of the layout.
"""

from __future__ import annotations

import torch
from torchao.quantization.quant_primitives import (
    MappingType,
    _choose_qparams_affine_tinygemm,
    _quantize_affine_tinygemm,
)
from torchao.quantization.quantize_.workflows.int4.int4_tile_packed_to_4d_tensor import Int4TilePackedTo4dTensor
from torchao.quantization.utils import pack_tinygemm_scales_and_zeros
from torchao.utils import find_multiple

from .grid import GroupQuant

INNER_K_TILES = 8
K_PAD, N_PAD = 1024, 8


def padded_shape(n: int, k: int) -> tuple[int, int]:
    return find_multiple(n, N_PAD), find_multiple(k, K_PAD)


def packed_bytes(n: int, k: int, group_size: int) -> int:
    """Bytes of one weight in this format: int4 two to a byte plus bf16 scale and zero per group, padded."""
    n_p, k_p = padded_shape(n, k)
    return n_p * k_p // 2 + (k_p // group_size) * n_p * 2 * 2


def tinygemm_quantize(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchao's own tinygemm qparams on the padded weight: (q int32 in [0, 15], scale, zero), as from_hp does."""
    n, k = weight.shape
    n_p, k_p = padded_shape(n, k)
    padded = torch.nn.functional.pad(weight.to(torch.bfloat16), (0, k_p - k, 0, n_p - n))
    block = (1, group_size)
    scale, zero = _choose_qparams_affine_tinygemm(
        padded,
        mapping_type=MappingType.ASYMMETRIC,
        block_size=block,
        target_dtype=torch.int32,
        quant_min=0,
        quant_max=15,
        scale_dtype=torch.bfloat16,
        zero_point_dtype=torch.bfloat16,
    )
    q = _quantize_affine_tinygemm(padded, block, scale, zero, torch.int32, quant_min=0, quant_max=15)
    return q, scale.reshape(n_p, -1), zero.reshape(n_p, -1)


def pack(q: torch.Tensor) -> torch.Tensor:
    """[N, K] values in [0, 15] (N % 8 == 0, K % 128 == 0) -> int32 [N/8, K/128, 32, 4] in the CUDA layout."""
    n, k = q.shape
    # [n_tile, r, k_outer, j, tile, h, c, e]: k = k_outer*128 + j*32 + tile*16 + h*8 + c*2 + e, n = n_tile*8 + r
    v = q.to(torch.int64).reshape(n // 8, 8, k // 128, 4, 2, 2, 4, 2)
    # words [n_tile, k_outer, t = r*4 + c, j], nibble p = e*4 + tile*2 + h
    v = v.permute(0, 2, 1, 6, 3, 7, 4, 5).reshape(n // 8, k // 128, 32, 4, 8)
    shifts = torch.arange(8, dtype=torch.int64) * 4
    words = (v << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # the uint32 bit pattern as int32
    return words.to(torch.int32).contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """Port of torchao's `_unpack_tensor_core_tiled_layout` CUDA kernel: int32 words -> [N, K] int32 values."""
    n_tiles, k_outer_tiles = packed.shape[:2]
    n, k = n_tiles * 8, k_outer_tiles * INNER_K_TILES * 16
    out = torch.empty(n, k, dtype=torch.int32)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    t = torch.arange(32)
    rows = torch.arange(n_tiles)[:, None] * 8 + t[None, :] // 4  # n0 per (n_tile, lane)
    for k_outer in range(k_outer_tiles):
        for inner in range(0, INNER_K_TILES, 2):
            k_base0 = (k_outer * INNER_K_TILES + inner) * 16
            ks = [k_base0 + (t % 4) * 2]
            ks.append(ks[0] + 8)
            ks.append(k_base0 + 16 + (t % 4) * 2)
            ks.append(ks[2] + 8)
            pack_word = words[:, k_outer, :, inner // 2]  # [n_tiles, 32]
            v = [(pack_word >> shift) & 0xF for shift in (0, 16, 4, 20, 8, 24, 12, 28)]  # v0, v1, v2, ... v7
            for i in range(4):
                out[rows, ks[i][None, :].expand_as(rows)] = v[2 * i].to(torch.int32)
                out[rows, ks[i][None, :].expand_as(rows) + 1] = v[2 * i + 1].to(torch.int32)
    return out


def build(weight: torch.Tensor, group_size: int) -> tuple[Int4TilePackedTo4dTensor, torch.Tensor]:
    """The tensor torchao's CUDA `from_hp` would make, built on this machine; also returns the unpadded int4
    values, for checking."""
    n, k = weight.shape
    q, scale, zero = tinygemm_quantize(weight, group_size)
    qdata = pack(q)
    scale_and_zero = pack_tinygemm_scales_and_zeros(scale, zero, torch.bfloat16)
    tensor = Int4TilePackedTo4dTensor(
        qdata=qdata,
        scale_and_zero=scale_and_zero,
        block_size=[1, group_size],
        shape=torch.Size([n, k]),
        act_pre_scale=None,
    )
    return tensor, q


def from_group_quant(quant: GroupQuant, group_size: int) -> tuple[Int4TilePackedTo4dTensor, torch.Tensor]:
    """The tile-packed tensor holding int4 values chosen elsewhere (asym, GPTQ): the same weights, since
    `(q - z) * s` on the [-8, 7] grid is `(q' - 8) * s + zero` with q' = q + 8 and zero = -z * s. Padding
    holds zeros (value 8, zero point 0). Also returns the padded [0, 15] values, for checking."""
    n, k = quant.qdata.shape
    n_p, k_p = padded_shape(n, k)
    q = torch.full((n_p, k_p), 8, dtype=torch.int32)
    q[:n, :k] = quant.qdata.to(torch.int32) + 8
    groups = k_p // group_size
    scale = torch.ones(n_p, groups, dtype=torch.bfloat16)
    zero = torch.zeros(n_p, groups, dtype=torch.bfloat16)
    scale[:n, : k // group_size] = quant.scale.to(torch.bfloat16)
    zero[:n, : k // group_size] = (-quant.zero_point.float() * quant.scale.float()).to(torch.bfloat16)
    tensor = Int4TilePackedTo4dTensor(
        qdata=pack(q),
        scale_and_zero=pack_tinygemm_scales_and_zeros(scale, zero, torch.bfloat16),
        block_size=[1, group_size],
        shape=torch.Size([n, k]),
        act_pre_scale=None,
    )
    return tensor, q


def dequantize(tensor: Int4TilePackedTo4dTensor) -> torch.Tensor:
    """bf16 weights from the packed data through the independent unpack: w = (q - 8) * scale + zero."""
    n, k = tensor.shape
    group_size = tensor.block_size[-1]
    q = unpack(tensor.qdata).float()
    scale = tensor.scale_and_zero[..., 0].transpose(0, 1).float()  # [N_p, K_p / g]
    zero = tensor.scale_and_zero[..., 1].transpose(0, 1).float()
    w = (q - 8) * scale.repeat_interleave(group_size, 1) + zero.repeat_interleave(group_size, 1)
    return w[:n, :k].to(torch.bfloat16)


def cpu_runnable(weight: torch.Tensor) -> torch.Tensor:
    """A weight a CPU can multiply with: tile-packed int4 (CUDA's kernel only) dequantized by the independent
    unpack; anything else as it is."""
    if isinstance(weight, Int4TilePackedTo4dTensor) and weight.qdata.device.type == "cpu":
        return dequantize(weight)
    return weight


def dequantize_tile_packed(model: torch.nn.Module) -> int:
    """Swap CUDA tile-packed int4 weights for their dequantized bf16 values so a CPU can run the model;
    returns how many were swapped. The values come from the port of torchao's unpack kernel, independent
    of the packer that wrote them."""
    swapped = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and isinstance(module.weight, Int4TilePackedTo4dTensor):
            module.weight = torch.nn.Parameter(dequantize(module.weight), requires_grad=False)
            swapped += 1
    return swapped
