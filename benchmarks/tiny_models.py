"""Tiny random models for tests and benchmarks: real architectures, a real tokenizer, seconds to quantize."""

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
