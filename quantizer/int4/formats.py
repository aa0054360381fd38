"""How int4 values are stored: one object per format, separate from how the values were chosen (`methods`).

torchao keeps the two apart too (qparams algorithms vs packing formats). A format knows where
torchao writes it by itself while loading (`torchao_writes_on`), whether it can hold values chosen
here (asym, GPTQ), the config that describes such values in config.json, and how to turn one weight
into its torchao tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization import (
    Int4WeightOnlyConfig,
    Int8DynamicActivationIntxWeightConfig,
    IntxWeightOnlyConfig,
    MappingType,
    PerGroup,
)
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
    IntxUnpackedToInt8Tensor,
    IntxUnpackedToInt8TensorActivationQuantization,
)

from ..errors import QuantizationError
from . import packed
from .grid import GroupQuant


@dataclass(frozen=True, kw_only=True)
class Int4Format:
    name: str
    description: str
    torchao_writes_on: tuple[str, ...]  # devices where torchao's own config writes it while loading
    own_qparams: str  # what the format's own round-to-nearest is called in reports
    calibrated_on: tuple[str, ...]  # devices where values chosen here (asym, GPTQ) are stored in it
    cuda_only: bool  # the checkpoint runs on CUDA only (it loads anywhere)
    pads_k: bool  # the input width is padded first, so any group size fits every layer

    def takes_calibrated(self, device: str) -> bool:
        return device in self.calibrated_on

    def declared_config(self, group_size: int, dynamic_activations: bool) -> AOBaseConfig:
        """The torchao config that describes tensors made by `tensor` in config.json."""
        raise NotImplementedError

    def tensor(self, weight: torch.Tensor, quant: GroupQuant | None, group_size: int, dynamic_activations: bool):
        """One weight as this format's torchao tensor; `quant` None means the format's own qparams."""
        raise NotImplementedError

    def install(
        self,
        linears: dict[str, torch.nn.Linear],
        quants: dict[str, GroupQuant] | None,
        group_size: int,
        dynamic_activations: bool,
    ) -> tuple[str, ...]:
        """Replace each Linear's weight by its tensor; returns what was checked on the way."""
        for name, module in linears.items():
            quant = quants[name] if quants is not None else None
            tensor = self.tensor(module.weight.data, quant, group_size, dynamic_activations)
            module.weight = torch.nn.Parameter(tensor, requires_grad=False)
        return ()


class IntxFormat(Int4Format):
    """torchao's portable `IntxUnpackedToInt8Tensor`: one int4 value per int8 byte, loads on CPU and CUDA."""

    def declared_config(self, group_size: int, dynamic_activations: bool) -> AOBaseConfig:
        if dynamic_activations:
            return Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4,
                weight_granularity=PerGroup(group_size),
                weight_mapping_type=MappingType.ASYMMETRIC,
            )
        return IntxWeightOnlyConfig(
            weight_dtype=torch.int4, granularity=PerGroup(group_size), mapping_type=MappingType.ASYMMETRIC
        )

    def tensor(self, weight: torch.Tensor, quant: GroupQuant | None, group_size: int, dynamic_activations: bool):
        if quant is None:
            raise ValueError("the Intx format's own qparams come from torchao's config, not from here")
        # the enum's plain value, as torchao's own config stores it: the enum class itself does not deserialize
        activation = (
            IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN.value if dynamic_activations else None
        )
        return IntxUnpackedToInt8Tensor(
            quant.qdata,
            quant.scale,
            quant.zero_point,
            target_dtype=torch.int4,
            block_size=(1, group_size),
            dtype=weight.dtype,
            activation_quantization=activation,
        )


class TilePackedFormat(Int4Format):
    """CUDA's `Int4TilePackedTo4dTensor` (two values a byte), written on a CPU by `packed` and checked there
    against an independent port of the unpack kernel; it holds torchao's tinygemm values or calibrated ones."""

    def declared_config(self, group_size: int, dynamic_activations: bool) -> AOBaseConfig:
        return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")

    def tensor(self, weight: torch.Tensor, quant: GroupQuant | None, group_size: int, dynamic_activations: bool):
        return self.packed(weight, quant, group_size)[0]

    @staticmethod
    def packed(weight: torch.Tensor, quant: GroupQuant | None, group_size: int):
        """torchao's tinygemm qparams when `quant` is None, else the values chosen elsewhere; with the padded
        [0, 15] values for checking."""
        if quant is None:
            return packed.build(weight.cpu(), group_size)
        return packed.from_group_quant(quant, group_size)

    def install(self, linears, quants, group_size, dynamic_activations) -> tuple[str, ...]:
        actual = expected = 0
        for name, module in linears.items():
            n, k = module.weight.shape
            tensor, q = self.packed(module.weight.data, quants[name] if quants is not None else None, group_size)
            if not torch.equal(packed.unpack(tensor.qdata), q):
                raise QuantizationError(
                    f"the CPU int4 packer disagrees with the unpack kernel on {name}; nothing was kept"
                )
            module.weight = torch.nn.Parameter(tensor, requires_grad=False)
            actual += tensor.qdata.numel() * 4 + tensor.scale_and_zero.numel() * 2
            expected += packed.packed_bytes(n, k, group_size)
        if actual != expected:
            raise QuantizationError(f"packed int4 takes {actual} bytes, the format's formula says {expected}")
        return (
            f"packed data of all {len(linears)} layers checked against a CPU port of torchao's unpack kernel",
            f"packed Linear weights: {actual} bytes, as the formula gives (int4 two to a byte plus bf16 scale and "
            f"zero per group of {group_size}, K padded to a multiple of 1024 and N to 8)",
        )


INTX = IntxFormat(
    name="intx",
    description="portable Intx: one int4 value per int8 byte; loads on CPU and CUDA",
    torchao_writes_on=("cpu", "cuda"),
    own_qparams="rtn",
    calibrated_on=("cpu", "cuda"),
    cuda_only=False,
    pads_k=False,
)
TILE_PACKED = TilePackedFormat(
    name="tile_packed",
    description="CUDA's tile-packed int4: two values a byte; runs on CUDA only",
    torchao_writes_on=("cuda",),
    own_qparams="tinygemm",
    calibrated_on=("cpu",),  # on CUDA torchao writes it itself (our packer, checked bit for bit, runs on CPU tensors)
    cuda_only=True,
    pads_k=True,
)
FORMATS: dict[str, Int4Format] = {f.name: f for f in (INTX, TILE_PACKED)}
