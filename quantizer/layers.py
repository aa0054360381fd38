"""Which Linear layers a job quantizes, found without weights (meta device) or counted in a loaded model.

A leaf module: the engine, the streaming engine, int4 and verification all ask it, and it asks
none of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torchao.utils import TorchAOBaseTensor
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.quantizers.base import get_keys_to_not_convert
from transformers.quantizers.quantizers_utils import should_convert_module


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True, kw_only=True)
class LayerCount:
    quantized: int
    skipped: tuple[str, ...]  # Linear layers left in the source dtype (a tied or untied lm_head)
    notes: tuple[str, ...] = ()  # what the engine checked on the way (the CPU packer's inverse and sizes)


def quantizable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers TorchAoConfig quantizes: all but the output embedding (and anything tied to it)."""
    keep = get_keys_to_not_convert(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, keep)
    }


def meta_model(config_dict: dict) -> torch.nn.Module:
    """The model of config.json on the meta device: its structure, no memory for weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict))


def planned_linear_layers(config_dict: dict) -> list[LinearLayer]:
    """The Linear layers that will be quantized, found from config.json alone on the meta device."""
    model = meta_model(config_dict)
    return [LinearLayer(n, m.in_features, m.out_features) for n, m in quantizable_linears(model).items()]


def planned_skipped_linears(config_dict: dict) -> tuple[str, ...]:
    """The Linear layers left as they are (the lm_head), named as `count_linear_layers` names them."""
    model = meta_model(config_dict)
    planned = quantizable_linears(model)
    return tuple(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in planned)


@dataclass(frozen=True, kw_only=True)
class WeightShare:
    """How much of a model's Linear-like weights (nn.Linear weights and 3-D weights such as the experts of a
    mixture-of-experts model, less the output embedding, which is always kept) the job quantizes."""

    quantized: int  # elements, in the Linear layers the job quantizes
    total: int
    left: tuple[str, ...]  # the weights left out, one name per kind ("model.layers.*.mlp.experts.down_proj")

    @property
    def fraction(self) -> float:
        return self.quantized / self.total if self.total else 1.0


def planned_share(config_dict: dict) -> WeightShare:
    """The share of Linear-like weights a job will quantize, found from config.json on the meta device."""
    model = meta_model(config_dict)
    planned = quantizable_linears(model)
    quantized = sum(m.weight.numel() for m in planned.values())
    others = {n: p for n, p in model.named_parameters() if p.dim() >= 3}  # weights outside nn.Linear (experts)
    left = tuple(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in others))
    return WeightShare(quantized=quantized, total=quantized + sum(p.numel() for p in others.values()), left=left)


def count_linear_layers(model: torch.nn.Module) -> LayerCount:
    """Count Linear layers whose weight is a torchao tensor, and name the ones left as they were."""
    quantized, skipped = 0, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if isinstance(module.weight, TorchAOBaseTensor):
                quantized += 1
            else:
                skipped.append(name)
    return LayerCount(quantized=quantized, skipped=tuple(skipped))
