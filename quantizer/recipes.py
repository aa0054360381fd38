"""The registry of quantization types: one `Recipe` per name, each a small torchao config builder.

Adding a type is one entry in `RECIPES`. A recipe knows which devices it runs on and why not,
so the pipeline can refuse a type before loading anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

DEFAULT_GROUP_SIZE = 128
GROUP_SIZES = (256, 128, 64, 32)  # largest first: the automatic choice takes the first that fits
BOTH = ("int8_weight_only", "int4_weight_only")

ConfigBuilder = Callable[[Hardware, int], AOBaseConfig]


@dataclass(frozen=True)
class Recipe:
    """One quantization type: how to build its torchao config and where it can run."""

    name: str
    suffix: str
    description: str
    build: ConfigBuilder
    devices: tuple[str, ...] = ("cpu", "cuda")
    uses_group_size: bool = False
    min_cuda_capability: tuple[int, int] | None = None
    formats: tuple[tuple[str, str], ...] = ()  # (device, what is stored and where it loads)
    intx_on: tuple[str, ...] = ()  # devices where it stores Intx int4, whose qparams --int4-method can improve
    dynamic_activations: bool = False
    tile_packed_on: tuple[str, ...] = ()  # devices where the output is CUDA's tile-packed int4 (runs on CUDA only)
    packed_on_cpu: bool = False  # a CPU writes the tile-packed format with our packer (unverified on a GPU so far)

    def tile_packed(self, hardware: Hardware) -> bool:
        return hardware.device in self.tile_packed_on

    def needs_divisible_groups(self, hardware: Hardware) -> bool:
        """Intx groups must divide every width; the tile-packed format pads K to a multiple of 1024 first."""
        return self.uses_group_size and not self.tile_packed(hardware)

    def runs_on(self, hardware: Hardware) -> str:
        return "CUDA GPUs only" if self.tile_packed(hardware) or self.devices == ("cuda",) else "CPU and CUDA"

    def unsupported_reason(self, hardware: Hardware) -> str | None:
        """Why this recipe cannot run on `hardware`, or None when it can."""
        if hardware.device not in self.devices:
            return f"{self.name} needs a CUDA GPU; this job runs on {hardware.name}"
        capability, needed = hardware.cuda_capability, self.min_cuda_capability
        if hardware.is_cuda and needed and capability and capability < needed:
            need, have = ".".join(map(str, needed)), ".".join(map(str, capability))
            return f"{self.name} needs CUDA compute capability >= {need}; {hardware.name} has {have}"
        return None

    def config(self, hardware: Hardware, group_size: int = DEFAULT_GROUP_SIZE) -> AOBaseConfig:
        return self.build(hardware, group_size)

    def format_on(self, hardware: Hardware) -> str:
        """What the checkpoint stores and where it loads, for the report, card and UI."""
        by_device = dict(self.formats)
        return by_device.get(hardware.device, by_device.get("any", ""))

    @property
    def hardware_text(self) -> str:
        if self.packed_on_cpu:
            return "made on CPU or CUDA GPU; runs on CUDA GPU"
        if self.devices == ("cuda",):
            if self.min_cuda_capability:
                return f"CUDA GPU (compute capability >= {'.'.join(map(str, self.min_cuda_capability))})"
            return "CUDA GPU"
        return "CPU or CUDA GPU"


def _tile_packed(hardware: Hardware, group_size: int) -> AOBaseConfig:
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")


def _int4_weight_only(hardware: Hardware, group_size: int) -> AOBaseConfig:
    if hardware.is_cuda:
        return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "int8_weight_only",
            "int8wo",
            "int8 weights, per-row scale; about half the size with almost no quality loss",
            lambda hw, g: Int8WeightOnlyConfig(),
            formats=(("any", "Int8Tensor: int8 weights with a per-row scale; loads on CPU and CUDA"),),
        ),
        Recipe(
            "int8_dynamic",
            "int8dq",
            "int8 weights and int8 activations quantized on the fly; faster matmuls on hardware with int8 kernels",
            lambda hw, g: Int8DynamicActivationInt8WeightConfig(),
            formats=(("any", "Int8Tensor with dynamic int8 activations; loads on CPU and CUDA"),),
        ),
        Recipe(
            "int4_weight_only",
            "int4wo",
            "int4 weights in groups; tile-packed 4-bit on CUDA, portable Intx (one int4 per byte) on CPU",
            _int4_weight_only,
            uses_group_size=True,
            intx_on=("cpu",),
            tile_packed_on=("cuda",),
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
            "int4_tile_packed",
            "int4tp",
            "truly 4-bit int4 (two values a byte), tile-packed for CUDA's int4 kernel; made on any machine, "
            "runs on CUDA GPUs",
            _tile_packed,
            uses_group_size=True,
            tile_packed_on=("cpu", "cuda"),
            packed_on_cpu=True,
            formats=(
                (
                    "cuda",
                    "Int4TilePackedTo4dTensor made by torchao on CUDA: two int4 values per byte; runs on CUDA only",
                ),
                (
                    "cpu",
                    "Int4TilePackedTo4dTensor written on this CPU with torchao's tinygemm qparams and a CPU port of "
                    "CUDA's int4 packer: two int4 values per byte; runs on CUDA only; unverified on a GPU so far",
                ),
            ),
        ),
        Recipe(
            "int8_dynamic_int4_weight",
            "8da4w",
            "int4 grouped weights with int8 dynamic activations; the format ExecuTorch and mobile CPUs use",
            lambda hw, g: Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=PerGroup(g)
            ),
            uses_group_size=True,
            intx_on=("cpu", "cuda"),
            dynamic_activations=True,
            formats=(
                (
                    "any",
                    "IntxUnpackedToInt8Tensor with int8 dynamic activations (int4 values one per "
                    "byte); loads on CPU and CUDA",
                ),
            ),
        ),
        Recipe(
            "float8_weight_only",
            "fp8wo",
            "float8 (e4m3) weights; for GPUs with float8 support (works on CPU, slowly)",
            lambda hw, g: Float8WeightOnlyConfig(),
            formats=(("any", "Float8Tensor: float8 e4m3 weights; loads on CPU and CUDA, fast on CUDA"),),
        ),
        Recipe(
            "float8_dynamic",
            "fp8dq",
            "float8 weights and activations; fastest on H100-class GPUs",
            lambda hw, g: Float8DynamicActivationFloat8WeightConfig(),
            devices=("cuda",),
            min_cuda_capability=(8, 9),
            formats=(("any", "Float8Tensor with dynamic float8 activations; loads on CUDA (>= 8.9)"),),
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
    for name in names or ["int8_weight_only"]:
        for n in BOTH if name == "both" else (name,):
            if n not in expanded:
                expanded.append(n)
    return [get(n) for n in expanded]


def check_supported(recipes: list[Recipe], hardware: Hardware) -> None:
    """Refuse, before any loading, every recipe the hardware cannot run."""
    reasons = [r for r in (recipe.unsupported_reason(hardware) for recipe in recipes) if r]
    if reasons:
        raise RecipeError("; ".join(reasons) + ". Pick another type, or run on a machine that has one.")


def check_group_size_value(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        sizes = ", ".join(map(str, sorted(GROUP_SIZES)))
        raise GroupSizeError(f"group size {group_size} is not supported: use one of {sizes}.")


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
