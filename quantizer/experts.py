"""The experts of a mixture-of-experts model: 3-D weights outside nn.Linear, and how a job quantizes them.

transformers 5 keeps each layer's experts as one 3-D parameter per projection
(`mlp.experts.gate_up_proj` [experts, 2 x intermediate, hidden], `mlp.experts.down_proj`), while
checkpoints store one 2-D tensor per expert (`mlp.experts.0.gate_proj.weight`, ...) that its loading
conversion merges. torchao quantizes a named parameter through `FqnToConfig`, and transformers'
TorchAoConfig applies such a config while loading, so the whole-model engine needs only the right
`FqnToConfig`; the streaming engine merges each layer's experts the way transformers' conversion does
(`merge_experts`) and makes the same `quantize_` call on them.

A leaf module next to `layers`: the engines, the pipeline and verification ask it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import FqnToConfig, quantize_
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightConverter

from .layers import meta_model, quantizable_linears


def expert_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The 3-D parameters of a model: the experts of a mixture of experts (an nn.Linear weight is 2-D)."""
    return {name: param for name, param in model.named_parameters() if param.dim() == 3}


def planned_expert_weights(config_dict: dict) -> dict[str, torch.Size]:
    """The experts' 3-D weights and their shapes, from config.json alone on the meta device."""
    return {name: param.shape for name, param in expert_weights(meta_model(config_dict)).items()}


def name_pattern(names: Iterable[str]) -> str:
    """One regular expression matching exactly these parameter names in every decoder layer."""
    generic = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(name)) for name in names})
    return "(?:" + "|".join(generic) + ")"


def covering(config: AOBaseConfig, config_dict: dict) -> FqnToConfig:
    """`config` applied to every weight TorchAoConfig would quantize and to every expert weight.

    The names are of parameters, not modules: transformers 5.24 applies a module-level match (or
    `_default`) to each parameter of a Linear, its bias too, which torchao then fails to run."""
    model = meta_model(config_dict)
    weights = [f"{name}.weight" for name in quantizable_linears(model)]
    return FqnToConfig({"re:" + name_pattern([*weights, *expert_weights(model)]): config})


def config_name(config: AOBaseConfig) -> str:
    """The config's name for the log: the config `covering` wraps, and what it covers."""
    if isinstance(config, FqnToConfig) and len(config.fqn_to_config) == 1:
        (inner,) = config.fqn_to_config.values()
        return f"{type(inner).__name__} on the Linear and expert weights"
    return type(config).__name__


def quantize_expert(weight: torch.Tensor, name: str, config: AOBaseConfig) -> torch.Tensor:
    """The call transformers makes while loading (a parameter-level FqnToConfig on the experts module), on a
    throwaway module that owns only this weight, so the bytes are the same."""
    holder = torch.nn.Module()
    holder.register_parameter(name, torch.nn.Parameter(weight, requires_grad=False))
    quantize_(holder, FqnToConfig({name: config}), filter_fn=None)
    value = getattr(holder, name)
    return value.data if isinstance(value, torch.nn.Parameter) else value


def write_forward(output_dir: Path, implementation: str | None) -> None:
    """Record in config.json the experts forward stock transformers must use to run these weights (its default,
    grouped_mm, needs ops torchao's int8 tensor does not have)."""
    if implementation is None:
        return
    path = output_dir / "config.json"
    config = json.loads(path.read_text())
    config["experts_implementation"] = implementation
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def expert_converters(model_type: str) -> list[WeightConverter]:
    """transformers' own rules for merging a checkpoint's per-expert tensors into the 3-D weights."""
    return [
        rule
        for rule in get_checkpoint_conversion_mapping(model_type) or []
        if isinstance(rule, WeightConverter) and any(".experts.*." in p for p in rule.source_patterns)
    ]
