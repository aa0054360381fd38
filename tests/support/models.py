"""Tiny random models for tests: real architectures, real tokenizer, seconds to quantize."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, SmolLM3Config

from quantizer.source import TOKENIZER_FILES


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


def copy_tokenizer(tokenizer_dir: Path, folder: Path) -> None:
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, folder / name)


def build_tiny_smollm3(folder: Path, tokenizer_dir: Path, shape: TinyShape = TinyShape(), seed: int = 0) -> Path:
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
    copy_tokenizer(tokenizer_dir, folder)
    return folder
