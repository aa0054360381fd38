"""The registry: every type from design.md, device support decided before any loading."""

import pytest
import torch
from torchao.quantization import Int4WeightOnlyConfig, IntxWeightOnlyConfig

from quantizer import recipes
from quantizer.cli import main
from quantizer.errors import GroupSizeError, RecipeError
from quantizer.hardware import Hardware

CPU = Hardware("cpu")
H100 = Hardware("cuda", (9, 0), "H100")
A100 = Hardware("cuda", (8, 0), "A100")


def test_registry_has_every_type_of_the_design_table():
    assert {name: r.suffix for name, r in recipes.RECIPES.items()} == {
        "int8_weight_only": "int8wo",
        "int8_dynamic": "int8dq",
        "int4_weight_only": "int4wo",
        "int8_dynamic_int4_weight": "8da4w",
        "float8_weight_only": "fp8wo",
        "float8_dynamic": "fp8dq",
        "int4_tile_packed": "int4tp",  # issue 9: CUDA's tile-packed int4, written on any machine
    }
    assert all(r.description and r.format_on(CPU if "cpu" in r.devices else H100) for r in recipes.RECIPES.values())


def test_both_expands_to_int8_and_int4_without_repeats():
    names = [r.name for r in recipes.resolve(["both", "int8_weight_only", "int8_dynamic"])]
    assert names == ["int8_weight_only", "int4_weight_only", "int8_dynamic"]


def test_unknown_type_names_the_known_ones():
    with pytest.raises(RecipeError, match=r"unknown quantization type 'int3'.*int8_weight_only.*both"):
        recipes.resolve(["int3"])


def test_int4_is_tile_packed_on_cuda_and_portable_intx_on_cpu():
    r = recipes.get("int4_weight_only")
    gpu = r.config(H100, 64)
    assert isinstance(gpu, Int4WeightOnlyConfig) and gpu.group_size == 64
    assert str(gpu.int4_packing_format).lower().endswith("tile_packed_to_4d")
    cpu = r.config(CPU, 32)
    assert isinstance(cpu, IntxWeightOnlyConfig) and cpu.weight_dtype == torch.int4
    assert cpu.granularity.group_size == 32
    assert "CUDA only" in r.format_on(H100) and "one per int8 byte" in r.format_on(CPU)


def test_float8_dynamic_refused_on_cpu_and_old_gpus_with_the_reason():
    fp8 = recipes.get("float8_dynamic")
    assert "needs a CUDA GPU" in fp8.unsupported_reason(CPU)
    assert ">= 8.9" in fp8.unsupported_reason(A100)
    assert fp8.unsupported_reason(H100) is None
    with pytest.raises(RecipeError, match="float8_dynamic needs a CUDA GPU"):
        recipes.check_supported([recipes.get("int8_weight_only"), fp8], CPU)


@pytest.mark.parametrize("bad", [0, 16, 100, 512])
def test_group_size_value_is_checked(bad):
    with pytest.raises(GroupSizeError, match="use one of 32, 64, 128, 256"):
        recipes.check_group_size_value(bad)


def test_list_quant_types_prints_the_registry(capsys):
    assert main(["--list-quant-types"]) == 0
    out = capsys.readouterr().out
    for name in recipes.RECIPES:
        assert name in out
    assert "CUDA GPU (compute capability >= 8.9)" in out
