"""Tiny random models for tests and benchmarks: real architectures, a real tokenizer, seconds to quantize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, SmolLM3Config

from quantizer.source import copy_side_files


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
    return save_random(config, folder, tokenizer_dir, seed)


def save_random(config, folder: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A model of `config` with seeded random bf16 weights, saved with the tokenizer of `tokenizer_dir`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    copy_side_files(tokenizer_dir, folder)
    return folder


# The causal-LM families people quantize most, as config.json overrides on a common tiny shape (two layers,
# hidden 64, the demo model's 49,152-token vocabulary so real text can be evaluated). Mixtures of experts
# have eight experts, two per token.
TINY_BASE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
EXPERTS = {"num_experts_per_tok": 2}
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "smollm3": {},
    "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16},
    "phi3": {},
    "phi": {},
    "olmo2": {},
    "granite": {},
    "cohere": {},
    "stablelm": {},
    "starcoder2": {},
    "gpt_neox": {},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "gpt2": {},
    "qwen3_moe": {"moe_intermediate_size": 64, "num_experts": 8, "head_dim": 16, **EXPERTS},
    "qwen2_moe": {
        "moe_intermediate_size": 64,
        "num_experts": 8,
        "shared_expert_intermediate_size": 128,
        **EXPERTS,
    },
    "mixtral": {"num_local_experts": 8, **EXPERTS},
    "olmoe": {"num_experts": 8, **EXPERTS},
    "granitemoe": {"num_local_experts": 8, **EXPERTS},
    "phimoe": {"num_local_experts": 8, **EXPERTS},
    "deepseek_v3": {
        "n_routed_experts": 8,
        "moe_intermediate_size": 64,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 16,
        "q_lora_rank": 32,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
        "n_group": 1,
        "topk_group": 1,
        **EXPERTS,
    },
}


def build_tiny_family(family: str, folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a random model of `family` (a key of FAMILIES) in bf16 with the demo model's tokenizer."""
    config = AutoConfig.for_model(family, **{**TINY_BASE, **FAMILIES[family]})
    return save_random(config, folder, tokenizer_dir, seed)
