"""The registry of quantization types: one `Recipe` per name, each a small torchao config builder.

Adding a type is one entry in `RECIPES`. A recipe knows which devices it runs on and why not,
so the pipeline can refuse a type before loading anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import (
    Float8DynamicActivationFloat8WeightConfig,
    Float8WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    PerGroup,
)

from .errors import GroupSizeError, RecipeError
from .hardware import Hardware
from .int4.formats import INTX, TILE_PACKED, Int4Format
from .layers import LinearLayer

DEFAULT_GROUP_SIZE = 128
GROUP_SIZES = (256, 128, 64, 32)  # largest first: the automatic choice takes the first that fits
DEFAULT_TYPE = "int8_weight_only"  # the type a job makes when none is named (CLI, API, form)
BOTH = (DEFAULT_TYPE, "int4_weight_only")

ConfigBuilder = Callable[[Hardware, int], AOBaseConfig]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One quantization type: how to build its torchao config, where it can run, and (int4 types) the storage
    format it writes on each device."""

    name: str
    suffix: str
    description: str
    build: ConfigBuilder
    devices: tuple[str, ...] = ("cpu", "cuda")
    min_cuda_capability: tuple[int, int] | None = None
    formats: tuple[tuple[str, str], ...] = ()  # (device or "any", what is stored and where it loads)
    int4_formats: tuple[tuple[str, Int4Format], ...] = ()  # (device or "any", how int4 values are stored)
    dynamic_activations: bool = False
    int8_matmul: bool = False  # runs int8 x int8 matmuls (torch._int_mm), which saturate on CPUs without VNNI
    # mixture-of-experts models: the devices where its torchao config quantizes the 3-D expert weights (checked by
    # tests/test_families.py), why it cannot elsewhere, and the experts forward stock transformers must use
    experts_on: tuple[str, ...] = ()
    experts_refusal: tuple[tuple[str, str], ...] = ()  # (device or "any", why not)
    experts_forward: str | None = None

    @property
    def uses_group_size(self) -> bool:
        return bool(self.int4_formats)

    def int4_format(self, hardware: Hardware) -> Int4Format | None:
        """The int4 storage format on this hardware; None for types that are not int4."""
        return on_device(self.int4_formats, hardware)

    def needs_divisible_groups(self, hardware: Hardware) -> bool:
        """Groups of values chosen here (and all Intx groups) must divide every width; torchao's own tile-packed
        values are taken after K is padded to a multiple of 1024, so any group size fits them."""
        storage = self.int4_format(hardware)
        return storage is not None and (not storage.pads_k or storage.takes_calibrated(hardware.device))

    def runs_on(self, hardware: Hardware) -> tuple[str, ...]:
        """The devices the output made on `hardware` runs on (int4_tile_packed made on a CPU runs on CUDA only)."""
        storage = self.int4_format(hardware)
        cuda_only = (storage is not None and storage.cuda_only) or self.devices == ("cuda",)
        return ("cuda",) if cuda_only else ("cpu", "cuda")

    def unsupported_reason(self, hardware: Hardware) -> str | None:
        """Why this recipe cannot run on `hardware`, or None when it can."""
        if hardware.device not in self.devices:
            return f"{self.name} needs a CUDA GPU; this job runs on {hardware.name}"
        capability, needed = hardware.cuda_capability, self.min_cuda_capability
        if hardware.is_cuda and needed and capability and capability < needed:
            need, have = ".".join(map(str, needed)), ".".join(map(str, capability))
            return f"{self.name} needs CUDA compute capability >= {need}; {hardware.name} has {have}"
        return None

    def experts_reason(self, hardware: Hardware) -> str | None:
        """Why this type cannot quantize a mixture of experts' 3-D expert weights on `hardware`, or None."""
        if hardware.device in self.experts_on:
            return None
        why = on_device(self.experts_refusal, hardware)
        return why or f"its torchao config does not quantize 3-D expert weights on {hardware.name}"

    def config(self, hardware: Hardware, group_size: int = DEFAULT_GROUP_SIZE) -> AOBaseConfig:
        return self.build(hardware, group_size)

    def format_on(self, hardware: Hardware) -> str:
        """What the checkpoint stores and where it loads, for the report, card and UI."""
        return on_device(self.formats, hardware) or ""

    @property
    def hardware_text(self) -> str:
        if "cpu" in self.devices and "cpu" not in self.runs_on(Hardware("cpu")):
            return "made on CPU or CUDA GPU; runs on CUDA GPU"
        if self.devices == ("cuda",):
            if self.min_cuda_capability:
                return f"CUDA GPU (compute capability >= {'.'.join(map(str, self.min_cuda_capability))})"
            return "CUDA GPU"
        return "CPU or CUDA GPU"


def on_device(pairs: tuple[tuple[str, T], ...], hardware: Hardware) -> T | None:
    """The entry for this hardware's device in (device or "any", value) pairs."""
    by_device = dict(pairs)
    return by_device.get(hardware.device, by_device.get("any"))


def _tile_packed(hardware: Hardware, group_size: int) -> AOBaseConfig:
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")


def _int4_weight_only(hardware: Hardware, group_size: int) -> AOBaseConfig:
    if hardware.is_cuda:
        return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


# why a type cannot quantize the 3-D expert weights of a mixture of experts (every type quantizes the rest)
INTX_EXPERTS = (
    "torchao's Intx int4 tensor takes 2-D weights only (its configs refuse 3-D ones) and cannot select one expert "
    "of a 3-D weight, so stock transformers could not run it"
)
TILE_PACKED_EXPERTS = (
    "torchao packs 3-D expert weights for CUDA's int4 kernel on a GPU only, this project's CPU packer writes 2-D "
    "weights only, and no such checkpoint has been run on a GPU here yet"
)
UNCHECKED_ON_GPU = (
    "torchao can quantize 3-D expert weights with it, but no such checkpoint has been run on a GPU here yet"
)
INT8_EXPERTS = {"experts_on": ("cpu", "cuda"), "experts_forward": "eager"}  # Int8Tensor has no grouped_mm

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="int8_weight_only",
            suffix="int8wo",
            description="int8 weights, per-row scale; about half the size with almost no quality loss",
            build=lambda hw, g: Int8WeightOnlyConfig(),
            formats=(("any", "Int8Tensor: int8 weights with a per-row scale; loads on CPU and CUDA"),),
            **INT8_EXPERTS,
        ),
        Recipe(
            name="int8_dynamic",
            suffix="int8dq",
            description="int8 weights and int8 activations quantized on the fly; faster matmuls on hardware with "
            "int8 kernels",
            build=lambda hw, g: Int8DynamicActivationInt8WeightConfig(),
            formats=(("any", "Int8Tensor with dynamic int8 activations; loads on CPU and CUDA"),),
            int8_matmul=True,
            **INT8_EXPERTS,
        ),
        Recipe(
            name="int4_weight_only",
            suffix="int4wo",
            description="int4 weights in groups; tile-packed 4-bit on CUDA, portable Intx (one int4 per byte) on CPU",
            build=_int4_weight_only,
            int4_formats=(("cpu", INTX), ("cuda", TILE_PACKED)),
            experts_refusal=(("cpu", INTX_EXPERTS), ("cuda", TILE_PACKED_EXPERTS)),
            formats=(
                (
                    "cuda",
                    "Int4TilePackedTo4dTensor: two int4 values per byte, tile-packed for CUDA; loads on CUDA only",
                ),
                (
                    "cpu",
                    "IntxUnpackedToInt8Tensor: int4 values stored one per int8 byte (same size as int8 "
                    "today); loads on CPU and CUDA",
                ),
            ),
        ),
        Recipe(
            name="int4_tile_packed",
            suffix="int4tp",
            description="truly 4-bit int4 (two values a byte), tile-packed for CUDA's int4 kernel; made on any "
            "machine, runs on CUDA GPUs",
            build=_tile_packed,
            int4_formats=(("any", TILE_PACKED),),
            experts_refusal=(("any", TILE_PACKED_EXPERTS),),
            formats=(
                (
                    "cuda",
                    "Int4TilePackedTo4dTensor made by torchao on CUDA: two int4 values per byte; runs on CUDA only",
                ),
                (
                    "cpu",
                    "Int4TilePackedTo4dTensor written on this CPU (torchao's tinygemm qparams, or calibrated ones with "
                    "--int4-method) by a CPU port of CUDA's int4 packer: two int4 values per byte; runs on CUDA only; "
                    "checked on an NVIDIA H200 (bit-identical to CUDA's packer; such checkpoints run there)",
                ),
            ),
        ),
        Recipe(
            name="int8_dynamic_int4_weight",
            suffix="8da4w",
            description="int4 grouped weights with int8 dynamic activations; the format ExecuTorch and mobile CPUs use",
            build=lambda hw, g: Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=PerGroup(g)
            ),
            int4_formats=(("any", INTX),),
            dynamic_activations=True,
            experts_refusal=(("any", INTX_EXPERTS),),
            formats=(
                (
                    "any",
                    "IntxUnpackedToInt8Tensor with int8 dynamic activations (int4 values one per "
                    "byte); loads on CPU and CUDA",
                ),
            ),
        ),
        Recipe(
            name="float8_weight_only",
            suffix="fp8wo",
            description="float8 (e4m3) weights; for GPUs with float8 support (works on CPU, slowly)",
            build=lambda hw, g: Float8WeightOnlyConfig(),
            formats=(("any", "Float8Tensor: float8 e4m3 weights; loads on CPU and CUDA, fast on CUDA"),),
            experts_on=("cpu", "cuda"),  # Float8Tensor has grouped_mm: transformers' default experts forward runs
        ),
        Recipe(
            name="float8_dynamic",
            suffix="fp8dq",
            description="float8 weights and activations; fastest on H100-class GPUs",
            build=lambda hw, g: Float8DynamicActivationFloat8WeightConfig(),
            devices=("cuda",),
            min_cuda_capability=(8, 9),
            formats=(("any", "Float8Tensor with dynamic float8 activations; loads on CUDA (>= 8.9)"),),
            experts_refusal=(("any", UNCHECKED_ON_GPU),),
        ),
    )
}


def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join([*RECIPES, "both"])
        raise RecipeError(f"unknown quantization type '{name}': choose one of {known}.") from None


def resolve(names: list[str]) -> list[Recipe]:
    """Expand `both` and drop repeats, keeping the order the user gave."""
    expanded: list[str] = []
    for name in names or [DEFAULT_TYPE]:
        for n in BOTH if name == "both" else (name,):
            if n not in expanded:
                expanded.append(n)
    return [get(n) for n in expanded]


def made_and_run_on(hardware: Hardware) -> list[str]:
    """The types this hardware both makes and runs (int4_tile_packed is made on a CPU but runs on CUDA only)."""
    return [
        r.name
        for r in RECIPES.values()
        if r.unsupported_reason(hardware) is None and hardware.device in r.runs_on(hardware)
    ]


def quantizing_experts(hardware: Hardware) -> list[str]:
    """The types that quantize a mixture of experts' 3-D expert weights on this hardware."""
    return [
        r.name
        for r in RECIPES.values()
        if r.experts_reason(hardware) is None and r.unsupported_reason(hardware) is None
    ]


def check_supported(recipes: list[Recipe], hardware: Hardware) -> None:
    """Refuse, before any loading, every recipe the hardware cannot run."""
    reasons = [r for r in (recipe.unsupported_reason(hardware) for recipe in recipes) if r]
    if reasons:
        raise RecipeError("; ".join(reasons) + ". Pick another type, or run on a machine that has one.")


def check_group_size_value(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        sizes = ", ".join(map(str, sorted(GROUP_SIZES)))
        raise GroupSizeError(f"group size {group_size} is not supported: use one of {sizes}.")


def choose_group_size(layers: list[LinearLayer], requested: int, explicit: bool) -> tuple[int, str | None]:
    """Return a group size that divides every layer's in_features, and a note when it differs from `requested`.

    torchao cannot quantize a layer whose width the group size does not divide. When the user
    asked for a size explicitly, we refuse and list the layers; with the default we take the
    largest standard size that fits everything and say so.
    """
    misfits = [layer for layer in layers if layer.in_features % requested]
    if not misfits:
        return requested, None
    widths = sorted({layer.in_features for layer in layers})
    fitting = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
    shown = ", ".join(f"{m.name} ({m.in_features})" for m in misfits[:6])
    more = f" and {len(misfits) - 6} more" if len(misfits) > 6 else ""
    if explicit or not fitting:
        hint = (
            f"use --group-size {fitting[0]}"
            if fitting
            else "no standard group size (256/128/64/32) divides them; use an int8 type instead"
        )
        raise GroupSizeError(
            f"group size {requested} does not divide the input width of {len(misfits)} layer(s): {shown}{more}; {hint}."
        )
    note = (
        f"group size {requested} does not divide the layer widths {widths}; "
        f"using {fitting[0]}, the largest of {'/'.join(map(str, GROUP_SIZES))} that divides all of them"
    )
    return fitting[0], note


def registry_table() -> str:
    """The registry as a plain-text table, for `--list-quant-types`."""
    rows = [("name", "suffix", "runs on", "group size", "description")]
    for r in RECIPES.values():
        rows.append((r.name, r.suffix, r.hardware_text, "yes" if r.uses_group_size else "-", r.description))
    rows.append(("both", "-", "-", "-", "int8_weight_only and int4_weight_only, each in its own output"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4] for row in rows
    )
