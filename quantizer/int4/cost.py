"""How long GPTQ will take on this machine, from config.json and a probe of the machine, before any weight is read.

GPTQ's time has three parts, and machines differ in each differently (a CPU that emulates bf16 computes the forward
passes in float32; a faster core speeds up the Python column loop but not memory-bound updates), so each part is
priced by its own measurement here instead of one seconds-per-parameter constant from one CPU:
- the calibration forward passes (every decoder layer twice) and the Hessians X^T X: matmul FLOPs, priced at the
  rate `compute.probe` measured for the dtype the job computes in;
- the column loop of `gptq.quantize_gptq`: one Python step per input column of each weight, priced by timing that
  very function on two small synthetic weights (a step's cost grows with the weight's rows);
- the lazy block updates and the Cholesky inverse: float32 FLOPs at the probe's float32 rate.
`OVERHEAD` covers what none of these counts (norms, activations, rotary embeddings, the quantized weights'
dequantization, torchao's own packing), from the demo's measured time on both kinds of CPU (`tests/test_real_model`
checks the estimate against the actual time on the machine that runs the tests).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..compute import PROBE_SHAPE, best_seconds, compute_dtype, probe, stored_dtype
from .gptq import quantize_gptq

PROBE_COLUMNS = 128  # one GPTQ block: the probe times the column loop alone
PROBE_ROWS = (256, 2048)
PROBE_GROUP = 64
PROBE_TOKENS = 512
OVERHEAD = 1.2  # actual / counted on the demo: 1.0-1.4 on a CPU with native bf16 and on one limited to AVX2
CALIBRATION_BATCH_SEQ_LEN = 256  # texts.CALIBRATION_SEQ_LEN (the attention's length)


@dataclass(frozen=True, kw_only=True)
class Rates:
    """This machine's prices for GPTQ's parts, measured once per process."""

    compute_flops: float  # matmul FLOP/s in the job's compute dtype
    float32_flops: float
    step_seconds: float  # a column step's fixed cost
    step_seconds_per_row: float  # and what each row of the weight adds to it


@dataclass(frozen=True, kw_only=True)
class Weight:
    """One weight GPTQ solves: rows x input columns (Linears that share an input are stacked)."""

    rows: int
    columns: int


def _column_step_seconds(rows: int, device: str) -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_TOKENS, PROBE_COLUMNS, generator=generator)
    hessian = (2 * x.T @ x / PROBE_TOKENS).to(device)
    weight = torch.randn(rows, PROBE_COLUMNS, generator=generator).to(device, torch.bfloat16)
    return best_seconds(
        lambda: quantize_gptq(weight, hessian, PROBE_GROUP, act_order=True, clip=True), repeats=3, device=device
    )


def _matmul_seconds(dtype: torch.dtype, device: str) -> float:
    """The CPU's are `compute.probe`'s (measured once for the job's dtype choice); a GPU's the same matmul there."""
    if device == "cpu":
        measured = probe(torch.bfloat16 if dtype == torch.float32 else dtype)
        return measured.float32_seconds if dtype == torch.float32 else measured.seconds
    rows, inner, outer = PROBE_SHAPE
    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(outer, inner, device=device, dtype=dtype)
    return best_seconds(lambda: torch.nn.functional.linear(a, b), repeats=3, device=device)


@functools.cache
def rates(stored: torch.dtype, device: str) -> Rates:
    """Measure this machine (about 0.1 s on 2 CPU cores): the matmul in the compute dtype and in float32, and the
    column loop at two widths."""
    rows, inner, outer = PROBE_SHAPE
    flops = 2 * rows * inner * outer
    float32_seconds = _matmul_seconds(torch.float32, device)
    compute = compute_dtype(stored, device)
    compute_seconds = float32_seconds if compute == torch.float32 else _matmul_seconds(compute, device)
    narrow, wide = (_column_step_seconds(r, device) / PROBE_COLUMNS for r in PROBE_ROWS)
    per_row = max(0.0, (wide - narrow) / (PROBE_ROWS[1] - PROBE_ROWS[0]))
    return Rates(
        compute_flops=flops / compute_seconds,
        float32_flops=flops / float32_seconds,
        step_seconds=max(0.0, narrow - per_row * PROBE_ROWS[0]),
        step_seconds_per_row=per_row,
    )


def layer_weights(config: dict) -> list[Weight]:
    """The weights GPTQ solves in one decoder layer of a dense Llama-like model, from config.json: q/k/v stacked,
    o, gate/up stacked, down (an MoE's experts are not Linear layers GPTQ sees; its estimate counts a dense MLP)."""
    d = int(config.get("hidden_size", 0) or 0)
    inter = int(config.get("intermediate_size", 4 * d) or 4 * d)
    heads = int(config.get("num_attention_heads", 1) or 1)
    kv = int(config.get("num_key_value_heads", heads) or heads)
    head_dim = int(config.get("head_dim") or (d // heads))
    return [
        Weight(rows=head_dim * (heads + 2 * kv), columns=d),
        Weight(rows=d, columns=head_dim * heads),
        Weight(rows=2 * inter, columns=d),
        Weight(rows=d, columns=inter),
    ]


def estimate_seconds(config: dict, calibration_tokens: int, device: str) -> float:
    """GPTQ's time for the model `config` describes, on this machine's `device`, with `calibration_tokens` tokens."""
    layers = int(config.get("num_hidden_layers", 0) or 0)
    weights = layer_weights(config)
    # a device this process cannot reach (a plan made for another machine) is priced on this CPU
    rate = rates(stored_dtype(config), device if device == "cpu" or torch.cuda.is_available() else "cpu")
    linear_flops = sum(2 * w.rows * w.columns for w in weights)  # per token
    attention_flops = 4 * CALIBRATION_BATCH_SEQ_LEN * weights[1].columns  # QK^T and AV, per token
    forward = 2 * calibration_tokens * (linear_flops + attention_flops) / rate.compute_flops  # two passes a layer
    hessians = sum(2 * calibration_tokens * w.columns**2 for w in weights) / rate.compute_flops
    steps = sum(w.columns * (rate.step_seconds + rate.step_seconds_per_row * w.rows) for w in weights)
    updates = sum(w.columns**2 * w.rows + 4 * w.columns**3 for w in weights) / rate.float32_flops
    return OVERHEAD * layers * (forward + hessians + steps + updates)
