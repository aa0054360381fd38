"""Mixed-precision int4: the Linear layers whose int4 error hurts their output most stay int8, within a budget of
bits per weight.

A layer's sensitivity is the relative error of its output on the calibration text when that layer alone is int4
(asymmetric round-to-nearest at the job's group size): with H = X^T X of its inputs in the source model and
E = W - Q(W), ||X E^T||^2 / ||X W^T||^2 = tr(E H E^T) / tr(W H W^T). One forward of the calibration tokens through
the source, a decoder layer at a time (`gptq.calibrated_layers`), measures every layer; nothing is quantized then.

The budget counts the bits a weight takes in 4-bit storage: 4 plus a 16-bit scale and zero point per group (5.0 at
group size 32) for int4, 8 plus one 16-bit scale per row for int8. Layers are kept int8 most sensitive first, each
one while the model's average stays within the budget (a layer too large for what is left is passed over for
smaller ones). The kept layers and every layer's sensitivity go to the report and the card.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import FqnToConfig, Int8WeightOnlyConfig

from ..errors import InputError
from ..layers import quantize_weight
from .formats import Int4Format
from .gptq import calibrated_layers
from .grid import quantize_asym
from .methods import Int4Method

KEPT_CONFIG = Int8WeightOnlyConfig  # what a kept layer is stored as (int8_weight_only's own config)
KEPT_NAME = "int8"


def int4_bits(group_size: int) -> float:
    return 4 + 32 / group_size


def int8_bits(in_features: int) -> float:
    return 8 + 16 / in_features


def check_budget(bits: float, group_size: int) -> None:
    """A budget between all-int4 and all-int8; anything else says what to pass."""
    low = int4_bits(group_size)
    if not low < bits < 8:
        raise InputError(
            f"--int4-mixed {bits:g}: give the average bits per Linear weight, more than int4's {low:g} at group "
            f"size {group_size} and less than int8's 8 (for example {low + 0.5:g}); for all-int8 use "
            "--quant-type int8_weight_only."
        )


@dataclass(frozen=True, kw_only=True)
class MixedPlan:
    """Which layers stay int8, the bits that leaves, and every layer's measured sensitivity."""

    budget_bits: float
    bits: float  # the average actually reached
    kept: tuple[str, ...]  # most sensitive first
    sensitivity: dict[str, float] = field(default_factory=dict)  # every Linear: relative output error as int4

    def rank(self, name: str) -> int:
        """1 for the most sensitive layer."""
        ordered = sorted(self.sensitivity, key=self.sensitivity.get, reverse=True)
        return ordered.index(name) + 1

    def summary(self) -> str:
        return (
            f"mixed precision: {len(self.kept)} of {len(self.sensitivity)} Linear layers kept {KEPT_NAME} (the most "
            f"sensitive on the calibration text), {self.bits:.2f} bits per weight for a budget of {self.budget_bits:g}"
        )

    def config_text(self, int4_config: str) -> str:
        """What config.json declares, in a line: the kept layers' config and the int4 one, by layer."""
        if not self.kept:
            return int4_config
        kept = f"{len(self.kept)} layers {KEPT_CONFIG.__name__}()"
        return f"FqnToConfig({kept}, {len(self.sensitivity) - len(self.kept)} layers {int4_config})"

    def to_dict(self) -> dict:
        return {
            "budget_bits": self.budget_bits,
            "bits": round(self.bits, 4),
            "kept": list(self.kept),
            "sensitivity": {name: round(error, 6) for name, error in self.sensitivity.items()},
        }


def layer_error(weight: torch.Tensor, hessian: torch.Tensor, group_size: int) -> float:
    """Relative output error of the layer with its weight alone int4: tr(E H E^T) / tr(W H W^T)."""
    w = weight.float()
    e = w - quantize_asym(weight, group_size).dequantize(group_size)
    return (torch.sum((e @ hessian) * e) / torch.sum((w @ hessian) * w).clamp(min=1e-30)).item()


def measure(
    model: torch.nn.Module, linears: dict[str, torch.nn.Linear], group_size: int, calibration: torch.Tensor
) -> dict[str, float]:
    """Every named Linear's sensitivity, from one calibration pass through the source (weights unchanged)."""
    errors: dict[str, float] = {}
    for layer in calibrated_layers(model, list(linears), calibration):
        errors.update(group_errors(layer.groups, lambda name: linears[name].weight.data, group_size))
    return {name: errors[name] for name in linears}


def group_errors(
    groups: list[tuple[list[str], torch.Tensor]], weight_of: Callable[[str], torch.Tensor], group_size: int
) -> dict[str, float]:
    """Each Linear's sensitivity from the Hessian of the input it shares with its group (`gptq.layer_hessians`)."""
    return {name: layer_error(weight_of(name), hessian, group_size) for group, hessian in groups for name in group}


def kept_tensor(weight: torch.Tensor) -> torch.Tensor:
    """A kept layer's weight as stored: int8, by int8_weight_only's own config."""
    return quantize_weight(weight, KEPT_CONFIG())


def choose(
    sensitivity: dict[str, float], shapes: dict[str, tuple[int, int]], budget_bits: float, group_size: int
) -> MixedPlan:
    """Keep the most sensitive layers int8 while the average bits per weight stay within the budget."""
    total = sum(n * k for n, k in shapes.values())
    spent = total * int4_bits(group_size)
    kept = []
    for name in sorted(sensitivity, key=sensitivity.get, reverse=True):
        n, k = shapes[name]
        extra = n * k * (int8_bits(k) - int4_bits(group_size))
        if (spent + extra) / total <= budget_bits:
            kept.append(name)
            spent += extra
    return MixedPlan(budget_bits=budget_bits, bits=spent / total, kept=tuple(kept), sensitivity=sensitivity)


def declared_config(plan: MixedPlan, int4_config: AOBaseConfig) -> AOBaseConfig:
    """The per-module config stock transformers reloads the output with: each kept layer by name, the int4 layers
    (every other Linear the plan measured) by one pattern that names them all (no "_default", which torchao
    deprecates)."""
    if not plan.kept:
        return int4_config
    entries: OrderedDict[str, AOBaseConfig | None] = OrderedDict((name, KEPT_CONFIG()) for name in plan.kept)
    int4_names = [name for name in plan.sensitivity if name not in plan.kept]
    if int4_names:
        entries["re:(" + "|".join(re.escape(name) for name in int4_names) + ")"] = int4_config
    return FqnToConfig(entries)


def check_job(
    bits: float,
    *,
    group_size: int,
    formats: dict[str, Int4Format],
    dynamic_types: list[str],
    method: Int4Method | None,
    device: str,
) -> None:
    """Refuse, before any work, a mixed-precision job that cannot be made as asked; each refusal says what to do.
    `formats` maps the job's int4 types to their storage here; `dynamic_types` are those with int8 activations."""
    check_budget(bits, group_size)
    if not formats:
        raise InputError("--int4-mixed applies to int4 types: add --quant-type int4_weight_only.")
    if dynamic_types:
        raise InputError(
            f"--int4-mixed keeps layers int8 weight-only, which {', '.join(dynamic_types)} (int8 activations) does "
            "not declare: use int4_weight_only, or leave out --int4-mixed."
        )
    unmade = [name for name, fmt in formats.items() if not fmt.takes_calibrated(device)]
    if unmade:
        raise InputError(
            f"{', '.join(unmade)} is written by torchao itself on {device}, layer by layer the same way: for "
            "--int4-mixed use --device cpu."
        )
    if method is None or method.torchao_own:
        raise InputError("--int4-mixed chooses the int4 values here: use --int4-method asym, hqq or gptq (or auto).")
