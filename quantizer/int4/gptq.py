"""GPTQ (Frantar et al., 2022): each Linear is quantized one column at a time on calibration activations,
pushing each column's rounding error onto the columns not yet quantized.

Layers are processed in order, each seeing the already-quantized layers before it, so the model
must be in memory as a whole (GPTQ does not stream). The grid is the asymmetric one of `grid`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..compute import cast_floats, compute_dtype
from ..layers import decoder_layers
from .grid import QMAX, QMIN, GroupQuant, asym_params, clipped_params


def quantize_gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    block: int = 128,
    damp: float = 0.001,
    act_order: bool = False,
    clip: bool = False,
) -> GroupQuant:
    """GPTQ for one Linear: `hessian` is X^T X of its inputs over the calibration tokens.

    `act_order` quantizes the columns with the largest inputs first (their error is then spread over the
    rest), with each group's qparams fixed beforehand from the original weights ("static groups", so the
    stored groups stay contiguous); `clip` chooses qparams by the clipping search of `grid.clipped_params`.

    The column loop is Python, one step per input column, so it works on the transposed weight (a column is
    then a contiguous row) with one fused rank-1 update a step: 45% less time than on column slices.
    """
    params = clipped_params if clip else asym_params
    w, h, scales, zeros, group_of, perm = ordered_columns(weight, hessian, group_size, act_order, params)
    n, k = w.shape
    h_inv = inverse_cholesky(h, damp)
    wt = w.T.contiguous()  # [k, n]
    qt = torch.zeros(k, n, device=w.device)
    scales_t, zeros_t = scales.float().T.contiguous(), zeros.float().T.contiguous()  # [groups, n]
    for start in range(0, k, block):
        end = min(start + block, k)
        w_block = wt[start:end].clone()
        errors = torch.zeros_like(w_block)
        h_block = h_inv[start:end, start:end]
        pivots = torch.diag(h_block).tolist()
        for i in range(end - start):
            column, g = start + i, group_of[start + i]
            if not act_order and column % group_size == 0:  # qparams from the group's current, updated weights
                group = torch.cat([w_block[i:], wt[end:]])[:group_size]
                scales[:, g], zeros[:, g] = params(group.T, weight.dtype)
                scales_t[g], zeros_t[g] = scales[:, g].float(), zeros[:, g].float()
            scale, zero, col = scales_t[g], zeros_t[g], w_block[i]
            q_col = torch.clamp(torch.round(col / scale + zero), QMIN, QMAX)
            qt[column] = q_col
            err = torch.sub(col, (q_col - zero) * scale, out=errors[i]).div_(pivots[i])
            w_block[i:].addr_(h_block[i, i:], err, alpha=-1)
        wt[end:] -= h_inv[start:end, end:].T @ errors
    q = qt.T
    if act_order:
        q = q[:, torch.argsort(perm)]
    return GroupQuant(q.to(torch.int8).contiguous(), scales, zeros)


def ordered_columns(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, act_order: bool, params):
    """The float32 weight and Hessian with dead inputs zeroed, in the order GPTQ visits the columns; the groups'
    qparams (fixed now with act-order, else zeros filled in as the loop reaches each group), each column's group,
    and the permutation (None without act-order)."""
    w = weight.float().clone()
    n, k = w.shape
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    groups = k // group_size
    if act_order:  # static groups: every group's qparams now, columns in order of their Hessian diagonal
        scales, zeros = params(w.reshape(n, groups, group_size), weight.dtype)
        perm = torch.argsort(torch.diag(h), descending=True)
        return w[:, perm], h[perm][:, perm], scales, zeros, (perm // group_size).tolist(), perm
    scales = torch.zeros(n, groups, dtype=weight.dtype, device=w.device)
    zeros = torch.zeros(n, groups, dtype=weight.dtype, device=w.device)
    return w, h, scales, zeros, [column // group_size for column in range(k)], None


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of H^-1, with `damp` x the mean diagonal added to H; ten times more each time
    H is still not positive definite (a layer that saw too few distinct inputs). 0.001 measured best on held-out
    text (benchmarks/int4_methods; 0.01, GPTQ's usual value, cost about a point of perplexity there)."""
    identity = torch.eye(h.shape[0], device=h.device)
    mean = torch.mean(torch.diag(h))
    for factor in (damp, damp * 10, damp * 100, damp * 1000):
        try:
            lower = torch.linalg.cholesky(h + factor * mean * identity)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("GPTQ: the layer's Hessian is not positive definite even with heavy damping")


@dataclass(kw_only=True)
class CalibratedLayer:
    """One decoder layer during a calibration pass: its named Linears, the modules its forward runs (upcast copies
    where the job computes in float32), and the Hessian of each set of Linears that read the same input."""

    index: int
    linears: dict[str, torch.nn.Linear]  # the model's own modules, in the source's dtype
    running: dict[str, torch.nn.Linear]  # what the forward runs: `linears`, or their upcast copies
    groups: list[tuple[list[str], torch.Tensor]]
    changed: bool = False  # a weight was replaced: the layer's outputs are computed again

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        """Replace a Linear's weight in the model and in the running copy, so later layers see it."""
        self.changed = True
        self.linears[name].weight.data = weight.to(self.linears[name].weight.dtype)
        self.running[name].weight.data = self.linears[name].weight.data.to(self.running[name].weight.dtype)


@torch.no_grad()
def calibrated_layers(model, names: list[str], calibration: torch.Tensor, batch: int = 8) -> Iterator[CalibratedLayer]:
    """Run the calibration tokens through the decoder one layer at a time, giving each layer with the Hessians of
    its named Linears' inputs. Weights the caller changes (`set_weight`) before asking for the next layer are what
    that layer's outputs, and so the next layer's inputs, are computed with."""
    path, layers = decoder_layers(model)
    compute = compute_dtype(model.dtype, model.device.type)
    hidden, layer_kwargs = capture_layer_inputs(model, calibration, batch)
    hidden, layer_kwargs = cast_floats(hidden, compute), cast_floats(layer_kwargs, compute)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    for index, layer in enumerate(layers):
        prefix = f"{path}.{index}."
        linears = {n: modules[n] for n in names if n.startswith(prefix)}
        runner = layer if compute == model.dtype else copy.deepcopy(layer).to(compute)  # upcast one layer at a time
        running = {n: runner.get_submodule(n.removeprefix(prefix)) for n in linears}
        groups, outputs = layer_hessians(runner, running, hidden, layer_kwargs)
        calibrated = CalibratedLayer(index=index, linears=linears, running=running, groups=groups)
        yield calibrated
        seen.update(linears)
        # the next layer calibrates on what this layer, as the caller left it, outputs
        if calibrated.changed and index + 1 < len(layers):
            outputs = [first(runner(chunk, **layer_kwargs[chunk.shape[0]])) for chunk in hidden]
        hidden = outputs
        del runner, running
    missing = set(names) - seen
    if missing:
        raise RuntimeError(f"found no decoder layer for {sorted(missing)[:3]}")


@torch.no_grad()
def layer_hessians(
    runner: torch.nn.Module, running: dict[str, torch.nn.Linear], hidden: list[torch.Tensor], layer_kwargs: dict
) -> tuple[list[tuple[list[str], torch.Tensor]], list[torch.Tensor]]:
    """One decoder layer run on every calibration chunk: the Hessians of its `running` Linears' inputs (grouped by
    shared input), and its outputs. `layer_kwargs` maps a chunk's batch size to the keyword arguments it takes."""
    hessians = SharedHessians()
    handles = [m.register_forward_hook(hessians.hook(n)) for n, m in running.items()]
    outputs = []
    try:
        for chunk in hidden:
            hessians.next_chunk()
            outputs.append(first(runner(chunk, **layer_kwargs[chunk.shape[0]])))
    finally:
        for handle in handles:
            handle.remove()
    return hessians.groups(), outputs


@torch.no_grad()
def gptq_model(
    model,
    names: list[str],
    group_size: int,
    calibration: torch.Tensor,
    progress: Callable[[int, int], None],
    batch: int = 8,
    act_order: bool = True,
    clip: bool = True,
) -> dict[str, GroupQuant]:
    """Quantize the named Linear layers of a decoder model layer by layer; returns their int4 weights.

    The model's weights are replaced by their dequantized int4 values as it goes, so each layer
    is calibrated on the outputs of the already-quantized layers before it. Linears fed the same input
    (q/k/v, gate/up) share one Hessian and are quantized as one stacked weight: GPTQ treats rows
    independently, so this gives their values with a third of the work.
    """
    result: dict[str, GroupQuant] = {}
    total = len(decoder_layers(model)[1])
    for layer in calibrated_layers(model, names, calibration, batch):
        for group, hessian in layer.groups:
            weights = [layer.linears[n].weight.data for n in group]  # the stored weights, in the source's dtype
            stacked = quantize_gptq(torch.cat(weights), hessian, group_size, act_order=act_order, clip=clip)
            for name, quant in zip(group, split_rows(stacked, [w.shape[0] for w in weights]), strict=True):
                result[name] = quant
                layer.set_weight(name, quant.dequantize(group_size))
        progress(layer.index + 1, total)
    return result


def split_rows(quant: GroupQuant, rows: list[int]) -> list[GroupQuant]:
    return [
        GroupQuant(q, s, z)
        for q, s, z in zip(quant.qdata.split(rows), quant.scale.split(rows), quant.zero_point.split(rows), strict=True)
    ]


class SharedHessians:
    """Forward hooks that accumulate 2 X^T X / n for each distinct input of a decoder layer's Linears.

    Linears called with the same input tensor in a forward pass (the attention's q/k/v, the MLP's
    gate/up) share one sum, computed once; `groups()` gives each set of such Linears with its Hessian.
    """

    def __init__(self) -> None:
        self._seen: list[tuple[torch.Tensor, str]] = []  # this chunk's inputs (held, so none is freed and its
        # memory reused by another input) and the first Linear that read each
        self._leader: dict[str, str] = {}  # Linear -> the Linear whose sum it shares
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def next_chunk(self) -> None:
        self._seen.clear()

    def hook(self, name: str):
        def accumulate(_module, inputs, _output) -> None:
            x = inputs[0]
            reader = next((first_reader for seen, first_reader in self._seen if seen is x), None)
            if reader is not None:
                self._leader.setdefault(name, reader)
                return
            self._seen.append((x, name))
            self._leader.setdefault(name, name)
            flat = x.reshape(-1, x.shape[-1]).float()
            if name not in self._sums:
                self._sums[name] = torch.zeros(flat.shape[1], flat.shape[1], device=flat.device)
                self._counts[name] = 0
            with exact_for(x.dtype):
                self._sums[name].addmm_(flat.T, flat)
            self._counts[name] += flat.shape[0]

        return accumulate

    def groups(self) -> list[tuple[list[str], torch.Tensor]]:
        if not self._sums:
            raise RuntimeError("a layer saw no calibration input")
        members: dict[str, list[str]] = {}
        for name, leader in self._leader.items():
            members.setdefault(leader, []).append(name)
        return [(group, 2 * self._sums[leader] / self._counts[leader]) for leader, group in members.items()]


@contextlib.contextmanager
def exact_for(dtype: torch.dtype):
    """Let fp32 matmuls take bf16 inputs (oneDNN's bf16 kernels, fp32 accumulation) when the values came from bf16
    and so lose nothing in the conversion: X^T X of a bf16 model's activations, about twice as fast on CPUs with
    bf16 matmul units (measured 212 -> 436 GFLOPS on 2 cores, relative difference 6e-7)."""
    if dtype != torch.bfloat16:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def first(output):
    return output[0] if isinstance(output, tuple) else output


class _Captured(Exception):
    pass


def capture_layer_inputs(model, calibration: torch.Tensor, batch: int):
    """The hidden states entering the first decoder layer for each calibration chunk, and the keyword
    arguments (position embeddings, masks) the layer is called with, per chunk size."""
    hidden, kwargs_by_size = [], {}
    first_layer = decoder_layers(model)[1][0]

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
