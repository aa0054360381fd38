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
from .formats import Int4Format
from .methods import Int4Method


@dataclass(frozen=True, kw_only=True)
class Int4Choice:
    method: Int4Method
    format: Int4Format
    group_size: int
    dynamic_activations: bool
    calibration: torch.Tensor | None = None  # token ids [rows, seq_len], for a calibrated method
    calibration_name: str | None = None  # what `calibration` was cut from

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
        if not self.method.calibrated or self.calibration is None:
            return []
        return [
            f"int4 qparams by {self.method.name.upper()} on {self.calibration.numel()} calibration tokens of "
            f"{self.calibration_name}"
        ]

    def quantize_model(self, model: torch.nn.Module, progress: Callable[[int, int], None]) -> tuple[str, ...]:
        """Install int4 weights in every quantizable Linear of a loaded model; returns what was checked."""
        linears = quantizable_linears(model)
        quants = self.method.quantize_model(model, linears, self.group_size, self.calibration, progress)
        return self.format.install(linears, quants, self.group_size, self.dynamic_activations)

    def quantize_tensor(self, weight: torch.Tensor):
        """One weight as its torchao tensor (the streaming engine's per-tensor path)."""
        quant = self.method.quantize_tensor(weight, self.group_size)
        return self.format.tensor(weight, quant, self.group_size, self.dynamic_activations)


def made_here(choice: Int4Choice | None, device: str) -> Int4Choice | None:
    """`choice` when its weights are made here (values chosen here, or a format torchao writes only elsewhere);
    None when torchao's own config makes them while loading, or the type is not int4."""
    return choice if choice is not None and not choice.torchao_writes(device) else None
