"""How much of a model each type quantizes: said before loading, checked again on what was written.

A mixture of experts holds most of its weights in 3-D expert weights; a type that cannot quantize
them would leave most of the model in the source dtype and still look like a success. Such a type is
refused before anything is loaded (unless the user asks for it, `--allow-partial`), and every
output's share is measured again, so nothing below half is ever called done without being asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError, QuantizationError
from .events import EventStream
from .experts import expert_converters
from .hardware import Hardware
from .layers import WeightShare, expert_weights, generic_name, meta_model, planned_share, unrunnable_linears
from .recipes import Recipe, quantizing_experts
from .source import SourceInfo

# below this share of its Linear-like weights quantized, an output is not called done unless asked for
MIN_QUANTIZED_SHARE = 0.5


CONV1D_REASON = (
    "transformers' Conv1D layers (GPT-2 style), which torchao's configs do not quantize (they take nn.Linear)"
)


@dataclass(frozen=True)
class Coverage:
    shares: dict[str, WeightShare]  # quant type -> the share of the Linear-like weights it will quantize
    has_experts: bool  # a mixture of experts with 3-D expert weights


def planned(
    info: SourceInfo, recipes: list[Recipe], hardware: Hardware, allow_partial: bool, events: EventStream
) -> Coverage:
    """The share each type will quantize, from one model built on the meta device. An architecture no type can
    run quantized, a type that cannot quantize the experts of a mixture of experts, or one that would quantize
    less than half, is refused with the reason (and the types that can quantize the experts), unless
    `allow_partial`."""
    model = meta_model(info.config)
    unrunnable = unrunnable_linears(model)
    if unrunnable:
        what = "; ".join(f"{name} {does}" for name, does in unrunnable.items())
        raise InputError(
            f"{info.ref} has Linear layers with a forward of their own ({what}): torchao's quantized weights lack "
            "that operation, so a quantized copy could not run. No type quantizes this architecture yet."
        )
    experts = list(expert_weights(model))
    shares = {r.name: planned_for(info, model, experts, r, hardware, allow_partial, events) for r in recipes}
    return Coverage(shares=shares, has_experts=bool(experts))


def planned_for(
    info: SourceInfo,
    model: torch.nn.Module,
    experts: list[str],
    recipe: Recipe,
    hardware: Hardware,
    allow_partial: bool,
    events: EventStream,
) -> WeightShare:
    """The share `recipe` will quantize of `model`, whose 3-D expert weights are `experts`."""
    reason = recipe.experts_reason(hardware) if experts else None
    share = planned_share(model, experts=bool(experts) and reason is None)
    expert_kinds = list(dict.fromkeys(generic_name(name) for name in experts))
    kinds = ", ".join(expert_kinds)
    if experts and reason is None:
        events.log(
            f"{recipe.name}: the experts ({kinds}) are quantized too: {share.fraction:.0%} of the Linear-like weights",
            quant_type=recipe.name,
        )
    if not share.left:
        return share
    why = []
    if "experts" in share.left_kinds:
        why.append(f"the experts ({kinds}): {recipe.name} cannot quantize them: {reason}")
    if "conv1d" in share.left_kinds:
        conv = [name for name in share.left if name not in expert_kinds]
        why.append(f"{', '.join(conv)}: {CONV1D_REASON}")
    what = (
        f"{recipe.name} would quantize {share.fraction:.0%} of {info.ref}'s Linear-like weights; left in the "
        f"source dtype: {'; '.join(why)}"
    )
    if allow_partial or (reason is None and share.fraction >= MIN_QUANTIZED_SHARE):
        events.warn(what, quant_type=recipe.name)
        return share
    if share.quantized == 0:
        raise InputError(f"{what}. There is nothing {recipe.name} can quantize in this model.")
    cure = ""
    if reason is not None:
        can = quantizing_experts(hardware)
        cure = f"Use {', '.join(can)}, which quantize the experts too, or pass" if can else ""
    raise InputError(f"{what}. {cure or 'Pass'} --allow-partial (command line) to quantize only the rest.")


def check_written(share: WeightShare, quant_type: str, allow_partial: bool) -> None:
    """Refuse to call an output done when less than half of its Linear-like weights were quantized."""
    if share.fraction >= MIN_QUANTIZED_SHARE or allow_partial:
        return
    raise QuantizationError(
        f"{quant_type} quantized only {share.fraction:.0%} of the Linear-like weights; left in the source dtype: "
        f"{', '.join(share.left)}. Nothing was published: check the group size and the type, or pass "
        "--allow-partial to keep such an output."
    )


def check_streaming(info: SourceInfo, recipes: list[Recipe], hardware: Hardware, has_experts: bool) -> None:
    """The streaming engine merges a checkpoint's per-expert tensors with transformers' own merge rules for the
    model type; a mixture of experts whose type has none (its checkpoint stores experts some other way) is
    refused rather than streamed with its experts left out."""
    quantizing = [r.name for r in recipes if r.experts_reason(hardware) is None]
    if quantizing and has_experts and not expert_converters(info.config["model_type"]):
        raise InputError(
            f"{info.ref} is a mixture of experts too large to load here ({info.weight_bytes / 1e9:.2f} GB of "
            f"weights), and the streaming engine knows no rule to merge the per-expert tensors of its model type "
            f"'{info.config['model_type']}' into the 3-D expert weights {', '.join(quantizing)} would quantize: "
            "run it on a machine with more memory."
        )
