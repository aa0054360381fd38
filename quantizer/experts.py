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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import FqnToConfig, quantize_
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightConverter, WeightRenaming

from .layers import expert_weights, meta_model, quantizable_linears


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


def model_names(model_type: str) -> Callable[[str], str]:
    """A checkpoint key -> the parameter's name inside the model, by transformers' renaming rules for the model
    type (Mixtral's `block_sparse_moe` is `mlp` inside). torchao's metadata is keyed by the model's names while
    the tensors keep the checkpoint's."""
    renamings = [r for r in get_checkpoint_conversion_mapping(model_type) or [] if isinstance(r, WeightRenaming)]

    def rename(key: str) -> str:
        for renaming in renamings:
            key = renaming.rename_source_key(key)[0]
        return key

    return rename


def expert_converters(model_type: str) -> list[WeightConverter]:
    """transformers' own rules for merging a checkpoint's per-expert tensors into the 3-D weights."""
    return [
        rule
        for rule in get_checkpoint_conversion_mapping(model_type) or []
        if isinstance(rule, WeightConverter) and any(".experts.*." in p for p in rule.source_patterns)
    ]


@dataclass(frozen=True)
class ExpertRule:
    """One of transformers' merge rules: per-expert source patterns -> one 3-D target weight."""

    converter: WeightConverter
    patterns: tuple[re.Pattern, ...]  # one per source pattern: (prefix)(expert index)

    @classmethod
    def of(cls, converter: WeightConverter) -> ExpertRule:
        compiled = []
        for pattern in converter.source_patterns:
            body = re.escape(pattern).replace(r"\*", r"(\d+)")
            boundary = "" if pattern.startswith(".") else r"(?:^|(?<=\.))"
            compiled.append(re.compile(rf"^(.*?){boundary}{body}$"))
        return cls(converter, tuple(compiled))

    @property
    def target(self) -> str:
        return self.converter.target_patterns[0]


class ExpertMerger:
    """Collects a checkpoint's per-expert 2-D tensors and, once a layer's pieces are all read, gives its 3-D
    expert weight merged by transformers' own conversion operations, as loading merges them; the streaming
    engine then quantizes it like the whole-model path does. Memory: the pieces of the weights not yet whole
    (one layer's experts when the checkpoint keeps a layer together)."""

    def __init__(self, model_type: str, experts: int) -> None:
        self.rules = [ExpertRule.of(c) for c in expert_converters(model_type)]
        self.experts = experts
        self.pending: dict[str, dict[int, dict[int, torch.Tensor]]] = {}  # target name -> pattern -> expert -> tensor
        self.merged = 0

    def match(self, key: str) -> tuple[ExpertRule, str, int, int] | None:
        """(rule, target parameter name, source pattern index, expert index) for a per-expert tensor's key."""
        for rule in self.rules:
            for index, pattern in enumerate(rule.patterns):
                found = pattern.match(key)
                if found:
                    return rule, found.group(1) + rule.target, index, int(found.group(2))
        return None

    def add(self, rule: ExpertRule, name: str, index: int, expert: int, tensor: torch.Tensor) -> torch.Tensor | None:
        """Keep one piece; the merged 3-D weight when it was the last one of `name`, else None."""
        pieces = self.pending.setdefault(name, {})
        pieces.setdefault(index, {})[expert] = tensor
        if len(pieces) < len(rule.patterns) or any(len(p) < self.experts for p in pieces.values()):
            return None
        del self.pending[name]
        data = {
            rule.converter.source_patterns[i]: [pieces[i][e] for e in range(self.experts)]
            for i in range(len(rule.patterns))
        }
        for operation in rule.converter.operations:
            data = operation.convert(
                data, source_patterns=rule.converter.source_patterns, target_patterns=rule.converter.target_patterns
            )
        self.merged += 1
        return next(iter(data.values()))

    def check_done(self) -> None:
        if self.pending:
            missing = sorted(self.pending)[:3]
            raise ValueError(f"the checkpoint lacks some experts' tensors of {missing}")
