"""GPTQ (Frantar et al., 2022): each Linear is quantized one column at a time on calibration activations,
pushing each column's rounding error onto the columns not yet quantized.

Layers are processed in order, each seeing the already-quantized layers before it, so the model
must be in memory as a whole (GPTQ does not stream). The grid is the asymmetric one of `grid`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .grid import GroupQuant, asym_params, round_to_grid


def quantize_gptq(
    weight: torch.Tensor, hessian: torch.Tensor, group_size: int, block: int = 128, damp: float = 0.01
) -> GroupQuant:
    """GPTQ for one Linear: `hessian` is X^T X of its inputs over the calibration tokens."""
    w = weight.float().clone()
    n, k = w.shape
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, device=h.device)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(n, k, device=w.device)
    scales = torch.zeros(n, k // group_size, dtype=weight.dtype, device=w.device)
    zeros = torch.zeros(n, k // group_size, dtype=weight.dtype, device=w.device)
    scale = zero = None
    for start in range(0, k, block):
        end = min(start + block, k)
        w_block = w[:, start:end].clone()
        errors = torch.zeros_like(w_block)
        h_block = h_inv[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % group_size == 0:  # qparams from the group's current, error-updated weights
                group = torch.cat([w_block[:, i:], w[:, end:]], dim=1)[:, :group_size]
                scale, zero = asym_params(group, weight.dtype)
                scales[:, column // group_size], zeros[:, column // group_size] = scale, zero
            col = w_block[:, i]
            q_col = round_to_grid(col, scale, zero)
            q[:, column] = q_col
            err = (col - (q_col - zero.float()) * scale.float()) / h_block[i, i]
            w_block[:, i:] -= err.unsqueeze(1) * h_block[i, i:].unsqueeze(0)
            errors[:, i] = err
        w[:, end:] -= errors @ h_inv[start:end, end:]
    return GroupQuant(q.to(torch.int8), scales, zeros)


@torch.no_grad()
def gptq_model(
    model,
    names: list[str],
    group_size: int,
    calibration: torch.Tensor,
    progress: Callable[[int, int], None],
    batch: int = 8,
) -> dict[str, GroupQuant]:
    """Quantize the named Linear layers of a decoder model layer by layer; returns their int4 weights.

    The model's weights are replaced by their dequantized int4 values as it goes, so each layer
    is calibrated on the outputs of the already-quantized layers before it.
    """
    layers = model.model.layers
    hidden, layer_kwargs = capture_layer_inputs(model, calibration, batch)
    modules = dict(model.named_modules())
    result: dict[str, GroupQuant] = {}
    wanted = set(names)
    for index, layer in enumerate(layers):
        prefix = f"model.layers.{index}."
        linears = {n: modules[n] for n in names if n.startswith(prefix)}
        hessians = {n: Hessian(m.in_features) for n, m in linears.items()}
        handles = [m.register_forward_hook(hessians[n]) for n, m in linears.items()]
        for chunk in hidden:
            layer(chunk, **layer_kwargs[chunk.shape[0]])
        for handle in handles:
            handle.remove()
        for name, module in linears.items():
            quant = quantize_gptq(module.weight.data, hessians[name].value(), group_size)
            result[name] = quant
            module.weight.data = quant.dequantize(group_size).to(module.weight.dtype)
        hidden = [first(layer(chunk, **layer_kwargs[chunk.shape[0]])) for chunk in hidden]
        progress(index + 1, len(layers))
    missing = wanted - set(result)
    if missing:
        raise RuntimeError(f"GPTQ found no decoder layer for {sorted(missing)[:3]}")
    return result


class Hessian:
    """A forward hook that accumulates 2 X^T X / n over a Linear's inputs."""

    def __init__(self, features: int):
        self.features = features
        self.sum: torch.Tensor | None = None
        self.count = 0

    def __call__(self, _module, inputs, _output) -> None:
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
        if self.sum is None:
            self.sum = torch.zeros(self.features, self.features, device=x.device)
        self.sum.addmm_(x.T, x)
        self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        if self.sum is None:
            raise RuntimeError("a layer saw no calibration input")
        return 2 * self.sum / self.count


def first(output):
    return output[0] if isinstance(output, tuple) else output


class _Captured(Exception):
    pass


def capture_layer_inputs(model, calibration: torch.Tensor, batch: int):
    """The hidden states entering the first decoder layer for each calibration chunk, and the keyword
    arguments (position embeddings, masks) the layer is called with, per chunk size."""
    hidden, kwargs_by_size = [], {}
    first_layer = model.model.layers[0]

    def grab(_module, args, kwargs):
        hidden.append(args[0] if args else kwargs.pop("hidden_states"))
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kwargs["use_cache"] = False
        kwargs_by_size.setdefault(hidden[-1].shape[0], kwargs)
        raise _Captured

    handle = first_layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for start in range(0, calibration.shape[0], batch):
            with contextlib.suppress(_Captured):
                model(calibration[start : start + batch].to(model.device), use_cache=False)
    finally:
        handle.remove()
    return hidden, kwargs_by_size
