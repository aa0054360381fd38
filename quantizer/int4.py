"""Better int4: asymmetric groups with a float zero point, and GPTQ, written as torchao's Intx tensors.

torchao's own Intx int4 on CPU is symmetric round-to-nearest; on real (off-grid) weights that
roughly doubles perplexity. Two methods here keep the same serializable tensor type
(`IntxUnpackedToInt8Tensor`, loaded by stock transformers on CPU and CUDA) with better numbers:

- `asym`: per group, scale = (max - min) / 15 and a bf16 zero point (the tinygemm convention);
  round-to-nearest, instant.
- `gptq`: the same grid, but each layer is quantized one column at a time on calibration
  activations, pushing each column's rounding error onto the columns not yet quantized
  (Frantar et al., 2022); layers are processed in order, each seeing the already-quantized
  layers before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, MappingType, PerGroup
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
    IntxUnpackedToInt8Tensor,
    IntxUnpackedToInt8TensorActivationQuantization,
)

QMIN, QMAX = -8, 7
METHODS = {
    "rtn": "torchao's round-to-nearest (symmetric groups on CPU); instant, the least accurate",
    "asym": "round-to-nearest with asymmetric groups and a float zero point; instant, much better than rtn",
    "gptq": "GPTQ on calibration text (error-compensating, asymmetric float zero points); the most accurate, "
    "about 1 s per million parameters on 2 CPU cores",
}
GPTQ_SECONDS_PER_PARAM = 1e-6  # measured on 2 CPU cores: SmolLM2-135M (106M Linear parameters) in 74 s
DEFAULT_GPTQ_BUDGET_SECONDS = 15 * 60
DEFAULT_CALIBRATION_TOKENS = 16384
CALIBRATION_SEQ_LEN = 256


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
    w = weight.float()
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    scale, zero = asym_params(groups, weight.dtype)
    q = round_to_grid(groups, scale.unsqueeze(-1), zero.unsqueeze(-1))
    return GroupQuant(q.to(torch.int8).reshape(n, k), scale, zero)


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


def intx_tensor(quant: GroupQuant, group_size: int, dtype: torch.dtype, dynamic_activations: bool):
    # the enum's plain value, as torchao's own config stores it: the enum class itself does not deserialize
    activation = (
        IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN.value if dynamic_activations else None
    )
    return IntxUnpackedToInt8Tensor(
        quant.qdata,
        quant.scale,
        quant.zero_point,
        target_dtype=torch.int4,
        block_size=(1, group_size),
        dtype=dtype,
        activation_quantization=activation,
    )


def declared_config(group_size: int, dynamic_activations: bool):
    """The torchao config that describes these tensors in config.json (asymmetric int4 groups)."""
    if dynamic_activations:
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(group_size), weight_mapping_type=MappingType.ASYMMETRIC
        )
    return IntxWeightOnlyConfig(
        weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=MappingType.ASYMMETRIC
    )


def calibration_ids(
    tokenizer, text: str, n_tokens: int = DEFAULT_CALIBRATION_TOKENS, seq_len: int = CALIBRATION_SEQ_LEN
) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    rows = max(1, min(n_tokens, ids.numel()) // seq_len)
    return ids[: rows * seq_len].reshape(rows, seq_len)


def default_calibration_text() -> str:
    """The second half of Python's pydoc topics: real English, disjoint from the evaluation text (the first
    tokens of the same document, a few thousand at most)."""
    from .verify import default_eval_text

    text = default_eval_text()
    return text[len(text) // 2 :]


def gptq_seconds(linear_params: int) -> float:
    return linear_params * GPTQ_SECONDS_PER_PARAM


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


def estimated_gptq_seconds_from_config(config: dict) -> float:
    """A rough GPTQ time from config.json alone (Linear parameters of the decoder layers)."""
    d = config.get("hidden_size", 0)
    inter = config.get("intermediate_size", 4 * d)
    layers = config.get("num_hidden_layers", 0)
    heads = config.get("num_attention_heads", 1) or 1
    kv = config.get("num_key_value_heads", heads) or heads
    head_dim = config.get("head_dim") or (d // heads if heads else 0)
    per_layer = d * head_dim * (2 * heads + 2 * kv) + 3 * d * inter
    return gptq_seconds(per_layer * layers)
