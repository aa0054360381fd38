"""Tiny random models for tests (built by benchmarks.tiny_models), and a model made to break quantization."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from benchmarks.tiny_models import DEFAULT_SHAPE, TinyShape, build_tiny_smollm3
from quantizer.compute import to_compute_dtype

__all__ = [
    "DEFAULT_SHAPE",
    "SLOW_SHAPE",
    "TinyShape",
    "build_tiny_smollm3",
    "in_the_jobs_dtype",
    "plant_unused_outliers",
]

SLOW_SHAPE = TinyShape(hidden=512, intermediate=4096, layers=12)  # GPTQ takes tens of seconds on it


def in_the_jobs_dtype(model):
    """A stock-loaded model as the job computed with it on this machine: as loaded where the CPU multiplies bf16
    natively, upcast where the job computed in float32 (`quantizer.compute`), so a test's logits compare with the
    report's on any CPU."""
    return to_compute_dtype(model, model.device.type)


def plant_unused_outliers(folder: Path, every: int = 32) -> Path:
    """Turn a saved tiny model into one that per-row and per-group quantization destroy.

    Every `every`-th input feature of the layers that read the residual stream is zeroed by its
    RMSNorm gain, so the model never uses those weight columns; setting them to 1e4 changes
    nothing for the source but makes them each row's (and each group's) absolute maximum, so
    every other weight rounds to zero. Real models with outlier features fail the same way.
    """
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[::every] = 0
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                linear.weight.mul_(20)
                linear.weight[:, ::every] = 1e4
            for linear in (attn.o_proj, mlp.down_proj):
                linear.weight.mul_(20)
    model.save_pretrained(folder)
    return folder
