"""CUDA's tile-packed int4 written on a CPU: the layout, the qparams, the sizes, and a stock round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchao.quantization.quant_primitives import (
    MappingType,
    _choose_qparams_affine_tinygemm,
    _dequantize_affine_tinygemm,
    _quantize_affine_tinygemm,
)
from torchao.quantization.quantize_.workflows.int4.int4_tile_packed_to_4d_tensor import Int4TilePackedTo4dTensor
from torchao.quantization.utils import pack_tinygemm_scales_and_zeros
from transformers import AutoModelForCausalLM

from quantizer import recipes
from quantizer.cli import main
from quantizer.hardware import Hardware
from quantizer.int4 import packed as int4_packed
from quantizer.texts import DEFAULT_CALIBRATION_TEXT_NAME, DEFAULT_EVAL_TEXT_NAME
from tests.support.models import TinyShape

ROOT = Path(__file__).resolve().parents[1]

SHAPES = [(8, 128), (64, 1024), (200, 1100), (576, 576), (40, 2048)]


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_pack_and_the_ported_unpack_kernel_are_inverses(n, k):
    n_p, k_p = int4_packed.padded_shape(n, k)
    q = torch.randint(0, 16, (n_p, k_p), dtype=torch.int32, generator=torch.Generator().manual_seed(n * k))
    packed = int4_packed.pack(q)
    assert packed.shape == (n_p // 8, k_p // 128, 32, 4) and packed.dtype == torch.int32
    assert torch.equal(int4_packed.unpack(packed), q)


def test_a_value_lands_in_the_word_and_nibble_the_layout_names():
    q = torch.zeros(16, 256, dtype=torch.int32)
    # n = 9: n_tile 1, row 1; k = 128 + 32 + 16 + 8 + 2*3 + 1 = 191: k_outer 1, j 1, tile 1, h 1, c 3, e 1
    q[9, 191] = 0xB
    packed = int4_packed.pack(q)
    t, nibble = 1 * 4 + 3, 1 * 4 + 1 * 2 + 1
    word = int(packed[1, 1, t, 1]) & 0xFFFFFFFF
    assert word == 0xB << (4 * nibble)
    assert int((packed != 0).sum()) == 1


def layout_position(n: int, k: int) -> tuple[tuple[int, int, int, int], int]:
    """Where int4-packed.md puts value (n, k): the word [n_tile, k_outer, t, j] and the nibble, written out here
    literally from the document (not from the packer)."""
    n_tile, r = divmod(n, 8)
    k_outer, rem = divmod(k, 128)
    j, rem = divmod(rem, 32)
    tile, rem = divmod(rem, 16)
    h, rem = divmod(rem, 8)
    c, e = divmod(rem, 2)
    return (n_tile, k_outer, r * 4 + c, j), e * 4 + tile * 2 + h


def test_every_value_sits_where_the_layout_document_says():
    generator = torch.Generator().manual_seed(7)
    q = torch.randint(0, 16, (24, 256), dtype=torch.int32, generator=generator)
    packed = int4_packed.pack(q)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    for n in range(24):
        for k in range(256):
            word, nibble = layout_position(n, k)
            assert (int(words[word]) >> (4 * nibble)) & 0xF == int(q[n, k]), (n, k)


def test_qparams_and_dequantization_match_torchaos_tinygemm_maths():
    weight = (torch.randn(64, 1100, generator=torch.Generator().manual_seed(1)) * 0.02).to(torch.bfloat16)
    tensor, q = int4_packed.build(weight, 64)
    _, scale, zero = int4_packed.tinygemm_quantize(weight, 64)
    reference = _dequantize_affine_tinygemm(q, (1, 64), scale, zero, torch.int32, 0, 15, output_dtype=torch.bfloat16)
    ours = int4_packed.dequantize(tensor)
    assert ours.shape == weight.shape
    assert torch.allclose(ours.float(), reference[:64, :1100].float(), atol=1e-2, rtol=1e-2)
    assert ((ours.float() - weight.float()).norm() / weight.float().norm()).item() < 0.12
    assert int4_packed.packed_bytes(64, 1100, 64) == tensor.qdata.numel() * 4 + tensor.scale_and_zero.numel() * 2


def test_the_registry_claims_the_gpu_check_only_as_the_committed_results_show():
    """The card's 'checked on a GPU' stands on benchmarks/results/gpu-int4-check.json, run on a real GPU."""
    r = recipes.get("int4_tile_packed")
    cpu = Hardware("cpu")
    assert r.runs_on(cpu) == ("cuda",) and r.unsupported_reason(cpu) is None
    report = json.loads((ROOT / "benchmarks" / "results" / "gpu-int4-check.json").read_text())
    assert not report["errors"]
    assert report["packer_vs_cuda"] and all(row["identical"] for row in report["packer_vs_cuda"])
    assert report["built_vs_from_hp"] and all(row["differing_words"] == 0 for row in report["built_vs_from_hp"])
    checkpoints = [row for key, row in report.items() if key.startswith("checkpoint-")]
    assert {row["int4_method"] for row in checkpoints} >= {"rtn", "gptq"}
    assert all(row["logits_rel_err_vs_cpu_reference"] < 0.03 and row["top1_agreement"] > 0.95 for row in checkpoints)
    assert f"checked on an {report['gpu']}" in r.format_on(cpu)
    # calibrated values need groups that divide the widths; torchao's own pad K first (on CUDA)
    assert r.needs_divisible_groups(cpu) and not r.needs_divisible_groups(Hardware("cuda", (9, 0), "H100"))


def test_a_cpu_written_checkpoint_round_trips_through_stock_transformers(tiny_model, tmp_path, capsys):
    source = tiny_model(TinyShape(hidden=96, intermediate=160, tied=False))
    code = main(
        [
            str(source),
            "packed",
            "--quant-type",
            "int4_tile_packed",
            "--group-size",
            "32",
            "--int4-method",
            "rtn",  # torchao's own tinygemm qparams, compared below with torchao's maths
            "--save-only",
            "--output-dir",
            str(tmp_path),
            "--json",
            "--no-tracking",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)["results"][0]
    assert result["group_size"] == 32 and result["int4_method"] == "tinygemm"  # 96 wide: padding makes 32 fit
    assert "unpack kernel" in result["verify"]["checked"] and result["verify"]["top1_agreement"] > 0.2
    assert any("as the formula gives" in note for note in result["notes"])

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")  # loads on CPU; runs on CUDA
    source_model = AutoModelForCausalLM.from_pretrained(source)
    expected_bytes = stored_bytes = 0
    for (name, module), (_, src) in zip(model.named_modules(), source_model.named_modules(), strict=True):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            assert isinstance(module.weight, Int4TilePackedTo4dTensor)
            # the reference is torchao's own tinygemm maths on the weight padded as the format pads it, and the
            # packed words are read back by the separate port of the unpack kernel, not by the packer
            n, k = src.weight.shape
            n_p, k_p = -(-n // 8) * 8, -(-k // 1024) * 1024
            padded = torch.nn.functional.pad(src.weight.data.to(torch.bfloat16), (0, k_p - k, 0, n_p - n))
            scale, zero = _choose_qparams_affine_tinygemm(
                padded,
                mapping_type=MappingType.ASYMMETRIC,
                block_size=(1, 32),
                target_dtype=torch.int32,
                quant_min=0,
                quant_max=15,
                scale_dtype=torch.bfloat16,
                zero_point_dtype=torch.bfloat16,
            )
            q = _quantize_affine_tinygemm(padded, (1, 32), scale, zero, torch.int32, 0, 15)
            assert torch.equal(int4_packed.unpack(module.weight.qdata), q.to(torch.int32))
            expected_sz = pack_tinygemm_scales_and_zeros(scale.reshape(n_p, -1), zero.reshape(n_p, -1), torch.bfloat16)
            assert torch.equal(module.weight.scale_and_zero, expected_sz)
            expected_bytes += n_p * k_p // 2 + (k_p // 32) * n_p * 4  # 4-bit values, bf16 scale and zero a group
            stored_bytes += module.weight.qdata.numel() * 4 + module.weight.scale_and_zero.numel() * 2
    assert stored_bytes == expected_bytes
    config = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"]
    assert config["quant_type"]["default"]["_type"] == "Int4WeightOnlyConfig"
    assert "tile_packed_to_4d" in json.dumps(config).lower()
    card = (tmp_path / "packed" / "README.md").read_text()
    assert "| runs on | CUDA GPUs only |" in card and 'device_map="cuda"' in card


def test_calibrated_values_in_the_tile_packed_format_are_the_intx_values(tiny_model, tmp_path, capsys):
    """GPTQ, HQQ and asym values stored two to a byte: the same int4 values as the portable Intx output of the same
    method, read back through the unpack port, and the same perplexity within 0.5%."""
    source = tiny_model(TinyShape(hidden=128, intermediate=256, tied=False))
    for method in ("asym", "hqq", "gptq"):
        out = tmp_path / method
        argv = [str(source), "m", "--quant-type", "int4_weight_only", "--quant-type", "int4_tile_packed"]
        code = main(
            [*argv, "--int4-method", method, "--save-only", "--output-dir", str(out), "--json", "--no-tracking"]
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err
        report = json.loads(captured.out)
        intx_result, packed_result = report["results"]
        # what the values were tuned on and what they were measured on, both named, of different domains
        assert report["eval_text"] == DEFAULT_EVAL_TEXT_NAME
        assert report["calibration_text"] == (DEFAULT_CALIBRATION_TEXT_NAME if method == "gptq" else None)
        card = (out / "m-int4wo" / "README.md").read_text()
        assert DEFAULT_EVAL_TEXT_NAME in card
        assert (DEFAULT_CALIBRATION_TEXT_NAME in card) == (method == "gptq")
        assert packed_result["int4_method"] == method and packed_result["group_size"] == intx_result["group_size"]
        ppl_intx, ppl_packed = intx_result["verify"]["ppl_quantized"], packed_result["verify"]["ppl_quantized"]
        assert abs(ppl_packed - ppl_intx) / ppl_intx < 0.005
        intx = AutoModelForCausalLM.from_pretrained(out / "m-int4wo")
        tile = AutoModelForCausalLM.from_pretrained(out / "m-int4tp")
        for (name, a), (_, b) in zip(intx.named_modules(), tile.named_modules(), strict=True):
            if isinstance(b, torch.nn.Linear) and isinstance(b.weight, Int4TilePackedTo4dTensor):
                n, k = b.weight.shape
                values = int4_packed.unpack(b.weight.qdata)[:n, :k] - 8
                assert torch.equal(values, a.weight.qdata.to(torch.int32)), (method, name)
