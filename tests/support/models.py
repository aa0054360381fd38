"""Tiny random models for tests: real architectures, real tokenizer, seconds to quantize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, SmolLM3Config

from quantizer.engine import copy_side_files


@dataclass(frozen=True)
class TinyShape:
    hidden: int = 64
    intermediate: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    tied: bool = True

    @property
    def label(self) -> str:
        return f"h{self.hidden}-i{self.intermediate}-{'tied' if self.tied else 'untied'}"


DEFAULT_SHAPE = TinyShape()


def build_tiny_smollm3(folder: Path, tokenizer_dir: Path, shape: TinyShape = DEFAULT_SHAPE, seed: int = 0) -> Path:
    """Save a random SmolLM3 in bf16 with the demo model's tokenizer (so real text can be evaluated)."""
    config = SmolLM3Config(
        vocab_size=49152,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=shape.tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    copy_side_files(tokenizer_dir, folder)
    return folder


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
