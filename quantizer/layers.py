"""Which Linear layers a job quantizes, found without weights (meta device) or counted in a loaded model.

A leaf module: the engine, the streaming engine, int4 and verification all ask it, and it asks
none of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import quantize_
from torchao.utils import TorchAOBaseTensor
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D
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
    share: WeightShare | None = None  # of the Linear-like weights, as written


def quantizable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The Linear layers TorchAoConfig quantizes: all but the output embedding (and anything tied to it)."""
    keep = get_keys_to_not_convert(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, keep)
    }


def expert_weights(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The 3-D parameters of a model: the experts of a mixture of experts (an nn.Linear weight is 2-D)."""
    return {name: param for name, param in model.named_parameters() if param.dim() == 3}


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The decoder layers and their name ("model.layers"; "gpt_neox.layers", "transformer.h" elsewhere): the
    first ModuleList as long as the model has layers."""
    count = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise ValueError(f"found no list of {count} decoder layers in {type(model).__name__}")


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
    """How much of a model's Linear-like weights (nn.Linear weights, transformers' Conv1D weights and 3-D weights
    such as the experts of a mixture-of-experts model, less the output embedding, which is always kept) a job
    quantizes, by elements (the source's bytes, all in one dtype)."""

    quantized: int
    total: int
    left: tuple[str, ...]  # the weights left out, one name per kind ("model.layers.*.mlp.experts.down_proj")
    left_kinds: tuple[str, ...] = ()  # of LINEAR_LIKE, the kinds of the weights left out

    @property
    def fraction(self) -> float:
        return self.quantized / self.total if self.total else 1.0


LINEAR_LIKE = ("linear", "conv1d", "experts")  # nn.Linear, transformers' Conv1D (GPT-2), 3-D expert weights


def generic_name(name: str) -> str:
    """A parameter's name with its layer and expert numbers as `*`: one name per kind of weight."""
    return re.sub(r"\.\d+\.", ".*.", name)


def linear_like_weights(model: torch.nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """name -> (kind, weight) for every Linear-like weight but the output embedding (and what is tied to it)."""
    keep = get_keys_to_not_convert(model)
    found: dict[str, tuple[str, torch.Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | Conv1D) and should_convert_module(name, keep):
            found[f"{name}.weight"] = ("linear" if isinstance(module, torch.nn.Linear) else "conv1d", module.weight)
    found.update({n: ("experts", p) for n, p in expert_weights(model).items()})
    return found


def share_of(weights: dict[str, tuple[str, torch.Tensor]], done: set[str]) -> WeightShare:
    left = [name for name in weights if name not in done]
    return WeightShare(
        quantized=sum(weights[name][1].numel() for name in done),
        total=sum(weight.numel() for _, weight in weights.values()),
        left=tuple(dict.fromkeys(generic_name(name) for name in left)),
        left_kinds=tuple(kind for kind in LINEAR_LIKE if any(weights[name][0] == kind for name in left)),
    )


# nn.Linear subclasses whose own forward uses tensor operations torchao's quantized weights lack, so a quantized
# copy could not run (found by benchmarks/architectures.py; other subclasses' forwards call F.linear and run)
FORWARDS_TORCHAO_CANNOT_RUN = {"FalconLinear": "computes input @ weight.T"}


def unrunnable_linears(model: torch.nn.Module) -> dict[str, str]:
    """class -> what its forward does, for the quantizable Linear layers that could not run quantized."""
    names = dict.fromkeys(type(m).__name__ for m in quantizable_linears(model).values())
    return {name: FORWARDS_TORCHAO_CANNOT_RUN[name] for name in names if name in FORWARDS_TORCHAO_CANNOT_RUN}


def planned_share(model: torch.nn.Module, experts: bool) -> WeightShare:
    """The share of Linear-like weights a job will quantize in `model` (on the meta device): nn.Linear weights,
    and with `experts` the 3-D expert weights too (torchao quantizes no Conv1D)."""
    weights = linear_like_weights(model)
    planned = {"linear", "experts"} if experts else {"linear"}
    return share_of(weights, {name for name, (kind, _) in weights.items() if kind in planned})


def measured_share(model: torch.nn.Module) -> WeightShare:
    """The share a loaded model has quantized: the Linear-like weights that are torchao tensors."""
    weights = linear_like_weights(model)
    return share_of(weights, {name for name, (_, w) in weights.items() if isinstance(w, TorchAOBaseTensor)})


def count_linear_layers(model: torch.nn.Module) -> LayerCount:
    """Count Linear layers and 3-D expert weights that are torchao tensors, and name the Linear layers left as
    they were."""
    quantized, skipped = 0, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if isinstance(module.weight, TorchAOBaseTensor):
                quantized += 1
            else:
                skipped.append(name)
    experts = sum(isinstance(p, TorchAOBaseTensor) for p in expert_weights(model).values())
    return LayerCount(quantized=quantized + experts, skipped=tuple(skipped), share=measured_share(model))


def quantize_weight(weight: torch.Tensor, config: AOBaseConfig) -> torch.Tensor:
    """The same quantize_ call transformers makes while loading, on a throwaway Linear that owns nothing else."""
    with torch.device("meta"):
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    quantize_(linear, config)
    return linear.weight.data if isinstance(linear.weight, torch.nn.Parameter) else linear.weight
