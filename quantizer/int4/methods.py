"""How int4 values are chosen: a small registry, one object per method, picked once at preflight.

Each method has a label, a time estimate, and how it quantizes a whole model (`quantize_model`,
which may need calibration tokens and every layer in memory) and a single tensor (`quantize_tensor`,
for the streaming engine). Where the values are stored is the format's business (`formats`).
Adding a method is one class and one entry in `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_affine_hqq

from .. import settings
from ..errors import InputError
from . import cost, gptq
from .formats import Int4Format
from .grid import QMIN, GroupQuant, quantize_asym

Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class Int4Method:
    name: str
    description: str
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

    def estimated_seconds(self, config: dict, calibration_tokens: int, device: str) -> float:
        """How long it takes on this machine for the model `config` describes (instant unless calibrated)."""
        return 0.0


class TorchaoRoundToNearest(Int4Method):
    def quantize_model(self, model, linears, group_size, calibration, progress) -> None:
        return None

    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> None:
        return None


class AsymRoundToNearest(Int4Method):
    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> GroupQuant:
        return quantize_asym(weight, group_size)


class HQQ(Int4Method):
    """torchao's HQQ qparams (`Int4WeightOnlyConfig(int4_choose_qparams_algorithm="hqq")` computes them the same
    way): each group's scale and zero point refined by half-quadratic optimization of the weight's own error."""

    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> GroupQuant:
        n, k = weight.shape
        q, scale, zero, _ = _choose_qparams_and_quantize_affine_hqq(
            weight,
            nbits=4,
            group_size=group_size,
            axis=1,
            compute_dtype=weight.dtype,
            device=str(weight.device),
            raw_output=True,  # HQQ's own grid: w = (q - zero) * scale with q in [0, 15]
        )
        # the shared grid is [-8, 7] with the same formula: q and the zero point shift by 8
        return GroupQuant(
            qdata=(q.to(torch.int16) + QMIN).to(torch.int8).reshape(n, k),
            scale=scale.reshape(n, k // group_size).to(weight.dtype),
            zero_point=(zero.float() + QMIN).reshape(n, k // group_size).to(weight.dtype),
        )


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

    def estimated_seconds(self, config: dict, calibration_tokens: int, device: str) -> float:
        return cost.estimate_seconds(config, calibration_tokens, device)

    def quantize_tensor(self, weight: torch.Tensor, group_size: int) -> GroupQuant:
        raise ValueError("gptq calibrates layer by layer on the whole model; it cannot quantize one tensor alone")


RTN = TorchaoRoundToNearest(
    name="rtn",
    description="torchao's round-to-nearest (symmetric groups on CPU); instant, the least accurate",
    torchao_own=True,
)
ASYM = AsymRoundToNearest(
    name="asym",
    description="round-to-nearest with asymmetric groups and a float zero point; instant, much better than rtn",
)
HQQ_METHOD = HQQ(
    name="hqq",
    description="torchao's HQQ: each group's scale and zero point optimized against the weight's own error, no "
    "calibration text; a second or so per layer",
)
GPTQ_METHOD = GPTQ(
    name="gptq",
    description="GPTQ on calibration text (error-compensating, columns in order of input size, each group's range "
    "by a clipping search, asymmetric float zero points); the most accurate; its time is estimated from a probe "
    "of the machine",
    calibrated=True,
    streams=False,
)
METHODS: dict[str, Int4Method] = {m.name: m for m in (RTN, ASYM, HQQ_METHOD, GPTQ_METHOD)}


def _gptq_without(name: str, what: str, **parts: bool) -> GPTQ:
    return GPTQ(
        name=name,
        description=f"GPTQ without {what}, for comparison",
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
    return settings.get("QUANTIZER_GPTQ_BUDGET")


def auto_description() -> str:
    """What `auto` means here, with the budget as configured."""
    return (
        f"auto ({DEFAULT_METHOD.name} when it fits in about {budget_seconds() / 60:.0f} minutes here, "
        f"else {FALLBACK_METHOD.name})"
    )


def describe_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True, kw_only=True)
class MethodChoice:
    """A job's int4 method, the sentence saying why, and, for a calibrated method, its time estimated on this
    machine (`cost`)."""

    method: Int4Method | None = None
    reason: str = ""
    estimated_seconds: float | None = None


def choose_method(
    requested: str | None,
    formats: dict[str, Int4Format],
    config: dict,
    *,
    streaming: bool,
    cuda: bool,
    calibration_tokens: int,
    budget: float | None = None,
) -> MethodChoice:
    """The job's int4 method and why. `formats` maps each int4 type of the job to the format it stores here. The
    default is GPTQ when its estimate on this machine fits the budget (`budget` seconds, else
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
        return MethodChoice()
    if method:
        if streaming and not method.streams:
            raise InputError(
                f"--int4-method {method.name} needs the whole model in memory; with the streaming engine use "
                f"{FALLBACK_METHOD.name} (or rtn)."
            )
        seconds = method.estimated_seconds(config, calibration_tokens, device) if method.calibrated else None
        about = f", about {describe_seconds(seconds)} here (estimated)" if seconds else ""
        return MethodChoice(
            method=method, reason=f"int4 method {method.name} (as asked{about})", estimated_seconds=seconds
        )
    if streaming:
        return MethodChoice(
            method=FALLBACK_METHOD,
            reason=f"int4 method {FALLBACK_METHOD.name}: {DEFAULT_METHOD.name.upper()} needs the whole model in "
            "memory, and this job streams it",
        )
    seconds = DEFAULT_METHOD.estimated_seconds(config, calibration_tokens, device)
    budget = budget if budget is not None else budget_seconds()
    if seconds <= budget:
        return MethodChoice(
            method=DEFAULT_METHOD,
            reason=f"int4 method {DEFAULT_METHOD.name}, the most accurate (about {describe_seconds(seconds)} on "
            "this machine, estimated from its measured speed)",
            estimated_seconds=seconds,
        )
    return MethodChoice(
        method=FALLBACK_METHOD,
        reason=f"int4 method {FALLBACK_METHOD.name}: {DEFAULT_METHOD.name.upper()} would take about "
        f"{describe_seconds(seconds)} on this machine (estimated from its measured speed; more than "
        f"{describe_seconds(budget)}); pass --int4-method {DEFAULT_METHOD.name} to use it anyway",
        estimated_seconds=seconds,
    )
