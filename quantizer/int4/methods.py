"""How int4 values are chosen: a small registry, one object per method, picked once at preflight.

Each method has a label, a time estimate, and how it quantizes a whole model (`quantize_model`,
which may need calibration tokens and every layer in memory) and a single tensor (`quantize_tensor`,
for the streaming engine). Where the values are stored is the format's business (`formats`).
Adding a method is one class and one entry in `METHODS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from . import gptq
from .formats import Int4Format
from .grid import GroupQuant, quantize_asym

Progress = Callable[[int, int], None]
DEFAULT_GPTQ_BUDGET_SECONDS = 15 * 60


@dataclass(frozen=True, kw_only=True)
class Int4Method:
    name: str
    description: str
    seconds_per_param: float  # measured on 2 CPU cores
    calibrated: bool = False  # needs calibration tokens
    streams: bool = True  # can quantize one tensor at a time (the streaming engine)
    torchao_own: bool = False  # the format's own round-to-nearest qparams, as torchao makes them

    def quantize_model(
        self,
        model: torch.nn.Module,
        linears: dict[str, torch.nn.Linear],
        group_size: int,
        calibration: torch.Tensor | None,
        progress: Progress,
    ) -> dict[str, GroupQuant] | None:
        """int4 values for every named Linear; None: the format's own qparams."""
        return {
            name: q for name, module in linears.items() if (q := self.quantize_tensor(module.weight.data, group_size))
        }

    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> GroupQuant | None:
        """int4 values for one weight; None: the format's own qparams."""
        raise NotImplementedError

    def estimated_seconds(self, linear_params: int) -> float:
        return linear_params * self.seconds_per_param


class TorchaoRoundToNearest(Int4Method):
    def quantize_model(self, model, linears, group_size, calibration, progress) -> None:
        return None

    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> None:
        return None


class AsymRoundToNearest(Int4Method):
    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> GroupQuant:
        return quantize_asym(weight, group_size)


@dataclass(frozen=True, kw_only=True)
class GPTQ(Int4Method):
    act_order: bool = True  # columns in order of their inputs' size
    clip: bool = True  # each group's range by the clipping search

    def quantize_model(self, model, linears, group_size, calibration, progress) -> dict[str, GroupQuant]:
        if calibration is None:
            raise ValueError("gptq needs calibration tokens")
        return gptq.gptq_model(
            model, list(linears), group_size, calibration, progress, act_order=self.act_order, clip=self.clip
        )

    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> GroupQuant:
        raise ValueError("gptq calibrates layer by layer on the whole model; it cannot quantize one tensor alone")


RTN = TorchaoRoundToNearest(
    name="rtn",
    description="torchao's round-to-nearest (symmetric groups on CPU); instant, the least accurate",
    seconds_per_param=0.0,
    torchao_own=True,
)
ASYM = AsymRoundToNearest(
    name="asym",
    description="round-to-nearest with asymmetric groups and a float zero point; instant, much better than rtn",
    seconds_per_param=0.0,
)
GPTQ_METHOD = GPTQ(
    name="gptq",
    description="GPTQ on calibration text (error-compensating, columns in order of input size, each group's range "
    "by a clipping search, asymmetric float zero points); the most accurate, about 0.3 s per million parameters "
    "on 2 CPU cores",
    seconds_per_param=0.3e-6,  # off-grid SmolLM2-135M, 106.2M Linear parameters, 28.6-31.7 s: benchmarks/int4_methods
    calibrated=True,
    streams=False,
)
METHODS: dict[str, Int4Method] = {m.name: m for m in (RTN, ASYM, GPTQ_METHOD)}


def _gptq_without(name: str, what: str, **parts: bool) -> GPTQ:
    return GPTQ(
        name=name,
        description=f"GPTQ without {what}, for comparison",
        seconds_per_param=GPTQ_METHOD.seconds_per_param,
        calibrated=True,
        streams=False,
        **parts,
    )


# GPTQ with a part of the default off, so `benchmarks.int4_methods` shows what each part buys through the real
# pipeline: reachable by name (a JobSpec, the API), not offered by the form or the command line
ABLATIONS: dict[str, Int4Method] = {
    m.name: m
    for m in (
        _gptq_without("gptq-plain", "act-order or the clipping search", act_order=False, clip=False),
        _gptq_without("gptq-no-clip", "the clipping search", clip=False),
        _gptq_without("gptq-no-act-order", "act-order", act_order=False),
    )
}
DEFAULT_METHOD = GPTQ_METHOD  # when it fits the time budget
FALLBACK_METHOD = ASYM  # when it does not, or the model streams


def get_method(name: str) -> Int4Method:
    try:
        return METHODS.get(name) or ABLATIONS[name]
    except KeyError:
        raise InputError(f"unknown int4 method '{name}': choose one of {', '.join(METHODS)}.") from None


def method_description(label: str | None) -> str:
    """What a method (by the label a result stores) does; empty for torchao's own GPU kernels' labels."""
    method = METHODS.get(label or "") or ABLATIONS.get(label or "")
    return method.description if method else ""


def budget_seconds() -> float:
    """How long the default method may take before the faster fallback is chosen (QUANTIZER_GPTQ_BUDGET)."""
    return float(os.environ.get("QUANTIZER_GPTQ_BUDGET", DEFAULT_GPTQ_BUDGET_SECONDS))


def auto_description() -> str:
    """What `auto` means here, with the budget as configured."""
    return (
        f"auto ({DEFAULT_METHOD.name} when it fits in about {budget_seconds() / 60:.0f} minutes here, "
        f"else {FALLBACK_METHOD.name})"
    )


def linear_params_from_config(config: dict) -> int:
    """A rough count of the decoder layers' Linear parameters from config.json alone."""
    d = config.get("hidden_size", 0)
    inter = config.get("intermediate_size", 4 * d)
    layers = config.get("num_hidden_layers", 0)
    heads = config.get("num_attention_heads", 1) or 1
    kv = config.get("num_key_value_heads", heads) or heads
    head_dim = config.get("head_dim") or (d // heads if heads else 0)
    per_layer = d * head_dim * (2 * heads + 2 * kv) + 3 * d * inter
    return per_layer * layers


def choose_method(
    requested: str | None,
    formats: dict[str, Int4Format],
    config: dict,
    *,
    streaming: bool,
    cuda: bool,
    budget: float | None = None,
) -> tuple[Int4Method | None, str]:
    """The job's int4 method and a sentence saying why. `formats` maps each int4 type of the job to the
    format it stores here. The default is GPTQ when its estimate fits the budget (`budget` seconds, else
    QUANTIZER_GPTQ_BUDGET), else asym."""
    method = get_method(requested) if requested else None
    device = "cuda" if cuda else "cpu"
    calibratable = [name for name, fmt in formats.items() if fmt.takes_calibrated(device)]
    own_only = [name for name, fmt in formats.items() if not fmt.takes_calibrated(device)]
    if method and not method.torchao_own and own_only and not calibratable:
        cure = "use --int4-method rtn, or --device cpu" if cuda else "use --int4-method rtn"
        raise InputError(
            f"--int4-method {method.name} chooses int4 values that {', '.join(own_only)} cannot store here: on CUDA "
            f"it is written tile-packed by torchao, with its own qparams: {cure}."
        )
    if not calibratable:
        return None, ""
    if method:
        if streaming and not method.streams:
            raise InputError(
                f"--int4-method {method.name} needs the whole model in memory; with the streaming engine use "
                f"{FALLBACK_METHOD.name} (or rtn)."
            )
        return method, f"int4 method {method.name} (as asked)"
    if streaming:
        return FALLBACK_METHOD, (
            f"int4 method {FALLBACK_METHOD.name}: {DEFAULT_METHOD.name.upper()} needs the whole model in memory, "
            "and this job streams it"
        )
    minutes = DEFAULT_METHOD.estimated_seconds(linear_params_from_config(config)) / 60
    budget = (budget if budget is not None else budget_seconds()) / 60
    if minutes <= budget:
        return DEFAULT_METHOD, (
            f"int4 method {DEFAULT_METHOD.name}, the most accurate (about {minutes:.0f} min on 2 CPU cores)"
        )
    return FALLBACK_METHOD, (
        f"int4 method {FALLBACK_METHOD.name}: {DEFAULT_METHOD.name.upper()} would take about {minutes:.0f} min "
        f"(more than {budget:.0f}); pass --int4-method {DEFAULT_METHOD.name} to use it anyway"
    )
