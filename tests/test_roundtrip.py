"""Every CPU quantization type: quantize -> save -> stock reload -> the logits the report claims."""

from __future__ import annotations

import json

import pytest
import torch
from torchao.utils import TorchAOBaseTensor
from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

from quantizer.cli import main
from quantizer.hardware import Hardware
from quantizer.recipes import RECIPES, made_and_run_on
from quantizer.texts import build_eval_data, default_eval_text
from tests.support.models import TinyShape, in_the_jobs_dtype

# the types a CPU both makes and runs (int4_tile_packed runs on CUDA only; it has its own tests)
CPU_TYPES = made_and_run_on(Hardware("cpu"))
SHAPES = [
    TinyShape(),  # tied embeddings, every width divisible by 128's divisors
    TinyShape(hidden=96, intermediate=160, tied=False),  # 128 and 64 divide neither width: group size 32
    TinyShape(hidden=128, intermediate=384, layers=3, heads=8, kv_heads=4, tied=False),
]


def run_all_types(source, out_dir, capsys) -> dict:
    argv = [str(source), "me/tiny", "--save-only", "--output-dir", str(out_dir), "--json"]
    for name in CPU_TYPES:
        argv += ["--quant-type", name]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.label)
def test_every_cpu_type_round_trips_with_stock_transformers(shape, tiny_model, tmp_path, capsys):
    source = tiny_model(shape)
    report = run_all_types(source, tmp_path, capsys)
    assert [r["quant_type"] for r in report["results"]] == CPU_TYPES
    tokenizer = AutoTokenizer.from_pretrained(source)
    data = build_eval_data(tokenizer, default_eval_text())
    reference = in_the_jobs_dtype(AutoModelForCausalLM.from_pretrained(source))
    with torch.no_grad():
        ref_logits = reference(data.batch).logits.float()

    for result in report["results"]:
        out = tmp_path / f"tiny-{RECIPES[result['quant_type']].suffix}"
        assert result["status"] == "ok" and result["output_dir"] == str(out)
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
        assert result["torchao_config"] in (out / "README.md").read_text()
        assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"

        model = AutoModelForCausalLM.from_pretrained(out)  # stock transformers, nothing of ours
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        quantized = [n for n, m in linears.items() if isinstance(m.weight, TorchAOBaseTensor)]
        assert len(quantized) == result["verify"]["quantized_linear"] == 7 * shape.layers
        assert result["verify"]["skipped_linear"] == 1  # the lm_head
        assert model.model.embed_tokens.weight.dtype == torch.bfloat16
        assert not isinstance(model.lm_head.weight, TorchAOBaseTensor)
        if shape.tied:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        if RECIPES[result["quant_type"]].int4_format(
            Hardware("cpu")
        ):  # the int4 types: GPTQ by default, float zero points kept
            assert result["int4_method"] == "gptq"
            weight = model.model.layers[0].mlp.down_proj.weight
            assert weight.zero_point.dtype == torch.bfloat16 and weight.qdata.dtype == torch.int8

        in_the_jobs_dtype(model)
        with torch.no_grad():
            logits = model(data.batch).logits.float()
        rel_err = ((logits - ref_logits).norm() / ref_logits.norm()).item()
        top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
        assert rel_err == pytest.approx(result["verify"]["logits_rel_err"], rel=1e-4, abs=1e-6)
        assert top1 == pytest.approx(result["verify"]["top1_agreement"], abs=1e-6)
        # against an independent reference: the type's own torchao config applied by stock transformers
        recipe = RECIPES[result["quant_type"]]
        config = recipe.config(Hardware("cpu"), result["group_size"] or 128)
        torchao_made = in_the_jobs_dtype(
            AutoModelForCausalLM.from_pretrained(source, quantization_config=TorchAoConfig(config))
        )
        with torch.no_grad():
            ref_q = torchao_made(data.batch).logits.float()
        if recipe.int4_format(Hardware("cpu")):  # GPTQ must do at least as well as torchao's round-to-nearest
            ref_err = ((ref_q - ref_logits).norm() / ref_logits.norm()).item()
            assert rel_err <= 1.05 * ref_err, (result["quant_type"], rel_err, ref_err)
        else:  # the same torchao path: the same numbers
            assert torch.equal(logits, ref_q), result["quant_type"]
        on_disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        source_disk = sum(f.stat().st_size for f in source.glob("*.safetensors"))
        assert result["output_bytes"] == on_disk and result["source_bytes"] == source_disk
        assert result["size_ratio"] == pytest.approx(on_disk / source_disk)
        assert set(result["seconds"]) == {"quantize", "save", "verify", "card"}
        assert result["peak_rss_bytes"] > 0
    # the default group size 128 is lowered to the largest standard size that divides every width, and says so
    expected = {64: 64, 96: 32, 128: 128}[shape.hidden]
    int4 = next(r for r in report["results"] if r["quant_type"] == "int4_weight_only")
    assert int4["group_size"] == expected
    assert any(f"using {expected}," in n for n in int4["notes"]) == (expected != 128)
    assert not list(tmp_path.glob(".*partial*"))
