"""One int4 type of one job: the chosen method, the storage format, the group size, and the calibration.

`Int4Choice` is what the engine and the streaming engine are handed; they never look at method
or format names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchao.core.config import AOBaseConfig

from ..layers import quantizable_linears
from . import mixed
from .formats import Int4Format
from .methods import Int4Method
from .mixed import MixedPlan


@dataclass(frozen=True, kw_only=True)
class Int4Choice:
    method: Int4Method
    format: Int4Format
    group_size: int
    dynamic_activations: bool
    calibration: torch.Tensor | None = None  # token ids [rows, seq_len], for a calibrated method
    calibration_name: str | None = None  # what `calibration` was cut from
    mixed_bits: float | None = None  # mixed precision: the budget in bits per Linear weight (`mixed`)

    @property
    def calibrated(self) -> bool:
        """Needs calibration tokens: a calibrated method, or mixed precision's sensitivity pass."""
        return self.method.calibrated or self.mixed_bits is not None

    @property
    def label(self) -> str:
        """How the values were chosen, for the report and the card: the method, or the format's own qparams."""
        return self.format.own_qparams if self.method.torchao_own else self.method.name

    def torchao_writes(self, device: str) -> bool:
        """torchao's own config makes these weights while loading (the standard TorchAoConfig path)."""
        return self.method.torchao_own and device in self.format.torchao_writes_on

    def config(self, recipe_config: AOBaseConfig) -> AOBaseConfig:
        """The torchao config written to config.json: the recipe's own, unless the values were chosen here."""
        if self.method.torchao_own:
            return recipe_config
        return self.format.declared_config(self.group_size, self.dynamic_activations)

    def notes(self) -> list[str]:
        if not self.calibrated or self.calibration is None:
            return []
        what = " and ".join(
            part
            for part, used in (
                (f"int4 qparams by {self.method.name.upper()}", self.method.calibrated),
                ("layer sensitivities for mixed precision", self.mixed_bits is not None),
            )
            if used
        )
        return [f"{what} on {self.calibration.numel()} calibration tokens of {self.calibration_name}"]

    def quantize_model(
        self, model: torch.nn.Module, progress: Callable[[int, int], None], declared: AOBaseConfig
    ) -> Installed:
        """Install int4 weights (and, for mixed precision, int8 ones in the most sensitive layers) in every
        quantizable Linear of a loaded model; `declared` is the int4 config the plan declares."""
        linears = quantizable_linears(model)
        if self.mixed_bits is None:
            quants = self.method.quantize_model(model, linears, self.group_size, self.calibration, progress)
            notes = self.format.install(linears, quants, self.group_size, self.dynamic_activations)
            return Installed(notes=notes, config=declared)
        if self.calibration is None:
            raise ValueError("mixed precision needs calibration tokens")
        sensitivity = mixed.measure(model, linears, self.group_size, self.calibration)
        shapes = {name: tuple(module.weight.shape) for name, module in linears.items()}
        plan = mixed.choose(sensitivity, shapes, self.mixed_bits, self.group_size)
        kept = {name: linears[name] for name in plan.kept}
        int8 = {name: mixed.kept_tensor(module.weight.data) for name, module in kept.items()}
        for name, module in kept.items():  # later layers calibrate on what the kept layers will compute
            module.weight.data = int8[name].dequantize().to(module.weight.dtype)
        rest = {name: module for name, module in linears.items() if name not in kept}
        quants = self.method.quantize_model(model, rest, self.group_size, self.calibration, progress)
        notes = self.format.install(rest, quants, self.group_size, self.dynamic_activations)
        for name, module in kept.items():
            module.weight = torch.nn.Parameter(int8[name], requires_grad=False)
        config = mixed.declared_config(plan, declared)
        return Installed(notes=(*notes, plan.summary()), config=config, mixed=plan)

    def quantize_tensor(self, weight: torch.Tensor):
        """One weight as its torchao tensor (the streaming engine's per-tensor path)."""
        quant = self.method.quantize_tensor(weight, self.group_size)
        return self.format.tensor(weight, quant, self.group_size, self.dynamic_activations)

    def tensor_quantizer(self, kept: tuple[str, ...] = ()) -> Callable[[str, torch.Tensor], torch.Tensor]:
        """The streaming engine's per-tensor path by weight name: the `kept` Linears (mixed precision) in int8, as the
        whole-model path stores them, the rest int4."""
        kept_weights = {f"{name}.weight" for name in kept}

        def quantize(name: str, weight: torch.Tensor) -> torch.Tensor:
            if name in kept_weights:
                return mixed.kept_tensor(weight)
            return self.quantize_tensor(weight)

        return quantize


@dataclass(frozen=True, kw_only=True)
class Installed:
    """What `Int4Choice.quantize_model` did: the checks on the way, the config that config.json declares, and the
    mixed-precision plan, if any."""

    notes: tuple[str, ...]
    config: AOBaseConfig
    mixed: MixedPlan | None = None


def made_here(choice: Int4Choice | None, device: str) -> Int4Choice | None:
    """`choice` when its weights are made here (values chosen here, or a format torchao writes only elsewhere);
    None when torchao's own config makes them while loading, or the type is not int4."""
    return choice if choice is not None and not choice.torchao_writes(device) else None
