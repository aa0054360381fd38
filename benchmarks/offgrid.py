"""An off-grid copy of a Llama-style model: the same function, weights no longer on a 4-bit grid.

The bundled SmolLM2-135M was dequantized from a Q4_1 GGUF, so every block of 32 weights already
sits on a 16-level grid and any int4 method with group size 32 and a float zero point recovers it
exactly. Rotating the residual stream by a random orthogonal matrix Q (after folding each RMSNorm
gain into the Linear layers that read it) computes the same function with weights off that grid:
q/k/v/gate/up get W diag(g) Q, o/down get Q^T W, the embedding E Q, and an untied lm_head
(E diag(g_final)) Q.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from quantizer.source import TOKENIZER_FILES


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a uniformly random rotation


@torch.no_grad()
def rotate(model, seed: int = 0) -> None:
    """Rotate the residual stream of a Llama-style model in place (float64 maths, model dtype kept)."""
    inner = model.model
    d = model.config.hidden_size
    q = random_orthogonal(d, seed)

    def set_(param: torch.nn.Parameter, value: torch.Tensor) -> None:
        param.data = value.to(param.dtype)

    embed = inner.embed_tokens.weight.double()
    final_gain = inner.norm.weight.double()
    head = (embed if model.config.tie_word_embeddings else model.lm_head.weight.double()) * final_gain
    model.lm_head.weight = torch.nn.Parameter((head @ q).to(inner.embed_tokens.weight.dtype), requires_grad=False)
    set_(inner.embed_tokens.weight, embed @ q)
    inner.norm.weight.data.fill_(1.0)
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for norm, readers in (
            (layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
            (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
        ):
            gain = norm.weight.double()
            for linear in readers:
                set_(linear.weight, (linear.weight.double() * gain) @ q)
            norm.weight.data.fill_(1.0)
        for linear in (attn.o_proj, mlp.down_proj):
            set_(linear.weight, q.T @ linear.weight.double())
    model.config.tie_word_embeddings = False


def build_offgrid(source: Path, dest: Path, seed: int = 0) -> Path:
    """Save a rotated, untied copy of `source` (bf16 safetensors plus the tokenizer) to `dest`, once."""
    if (dest / "model.safetensors").is_file():
        return dest
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    model.config.tie_word_embeddings = False
    rotate(model, seed)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for name in (*TOKENIZER_FILES, "README.md"):
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest
