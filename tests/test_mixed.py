"""Mixed-precision int4: each layer's measured sensitivity, the budget, and outputs stock transformers reloads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantizer import int4
from quantizer.cli import main
from quantizer.errors import InputError
from quantizer.events import EventStream
from quantizer.hardware import detect
from quantizer.int4 import mixed
from quantizer.int4.formats import INTX, TILE_PACKED
from quantizer.source import copy_side_files
from quantizer.texts import calibration_ids, default_calibration_text
from quantizer.whole_model import load_with_int4
from tests.support.models import TinyShape
from tests.test_streaming import read_tensors, same_bytes

SHAPE = TinyShape(hidden=128, intermediate=256, layers=2)
INT8_TYPE = "Int8Tensor"


def test_a_layers_sensitivity_is_its_relative_output_error_on_its_inputs():
    """The Hessian form equals ||X E^T||^2 / ||X W^T||^2 computed from the inputs themselves."""
    torch.manual_seed(0)
    x = torch.randn(512, 128) * (torch.rand(128) * 3)  # uneven input scales, as real activations have
    w = (torch.randn(64, 128) * 0.02).to(torch.bfloat16)
    hessian = 2 * x.T @ x / x.shape[0]
    error = w.float() - int4.quantize_asym(w, 32).dequantize(32)
    direct = ((x @ error.T).norm() ** 2 / (x @ w.float().T).norm() ** 2).item()
    assert mixed.layer_error(w, hessian, 32) == pytest.approx(direct, rel=1e-4)


def test_the_most_sensitive_layers_are_kept_while_the_budget_allows():
    sensitivity = {"a": 0.5, "big": 0.3, "b": 0.1, "c": 0.05}
    shapes = {"a": (64, 64), "big": (256, 64), "b": (64, 64), "c": (64, 64)}
    # 28672 weights at 5.0 bits; keeping a 64x64 layer int8 (8.25 bits) adds 13312 bits, the big one 53248
    assert mixed.choose(sensitivity, shapes, 5.4, 32).kept == ()
    half = mixed.choose(sensitivity, shapes, 5.5, 32)
    assert half.kept == ("a",) and half.bits == pytest.approx(5 + 13312 / 28672)
    six = mixed.choose(sensitivity, shapes, 6.0, 32)
    assert six.kept == ("a", "b")  # the big layer does not fit what is left; the next smaller one does
    assert six.bits <= 6.0 and six.rank("big") == 2


@pytest.mark.parametrize("bits", [5.0, 4.5, 8.0, 9.0])
def test_a_budget_outside_int4_to_int8_is_refused_with_what_to_pass(bits):
    with pytest.raises(InputError, match="average bits per Linear weight"):
        mixed.check_budget(bits, 32)


def installed(source: Path, fmt, bits: float = 6.0):
    """The source with mixed-precision weights installed by the whole-model engine, before saving."""
    tokenizer_ids = calibration_ids(AutoTokenizer.from_pretrained(source), default_calibration_text(), 512)
    choice = int4.Int4Choice(
        method=int4.get_method("gptq"),
        format=fmt,
        group_size=32,
        dynamic_activations=False,
        calibration=tokenizer_ids,
        calibration_name="default",
        mixed_bits=bits,
    )
    declared = fmt.declared_config(32, False)
    return load_with_int4(source, declared, choice, detect("cpu"), EventStream(), "int4_weight_only")


def test_stock_transformers_reloads_a_mixed_output_with_identical_logits(tiny_model, tmp_path):
    model, done = installed(tiny_model(SHAPE), INTX)
    assert done.mixed is not None and 0 < len(done.mixed.kept) < len(done.mixed.sensitivity)
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto").eval()
    with torch.no_grad():
        after = reloaded(ids).logits
    assert torch.equal(before, after)
    kinds = {name: type(m.weight).__name__ for name, m in reloaded.named_modules() if name in done.mixed.sensitivity}
    assert {n for n, k in kinds.items() if k == INT8_TYPE} == set(done.mixed.kept)
    assert set(kinds.values()) == {INT8_TYPE, "IntxUnpackedToInt8Tensor"}


def test_a_tile_packed_mixed_output_reloads_the_same_tensors(tiny_model, tmp_path):
    """The truly 4-bit format runs on CUDA only: its reloaded tensors are compared part by part."""
    model, done = installed(tiny_model(SHAPE), TILE_PACKED, bits=5.5)
    model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    ours, theirs = dict(model.named_modules()), dict(reloaded.named_modules())
    for name in done.mixed.sensitivity:
        a, b = ours[name].weight, theirs[name].weight
        assert type(b).__name__ == (INT8_TYPE if name in done.mixed.kept else "Int4TilePackedTo4dTensor"), name
        parts, _ = a.__tensor_flatten__()
        for part in parts:
            assert torch.equal(getattr(a, part), getattr(b, part)), (name, part)


def kept_in_card(card: str) -> list[str]:
    section = card.split("### Mixed precision")[1].split("\n## ")[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def saved_types(folder: Path) -> dict[str, str]:
    """Each quantized weight's torchao type, from the safetensors header as transformers reads it."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    return {
        name.removesuffix(".weight"): json.loads(meta[name])["_type"]
        for name in json.loads(meta["tensor_names"])
        if name.endswith(".weight") and json.loads(meta[name])["_type"] != "Tensor"
    }


def test_the_card_lists_exactly_the_layers_saved_in_int8(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(tiny_model(SHAPE)), "mixed", "--quant-type", "int4_weight_only", "--int4-method", "asym"]
    argv += ["--int4-mixed", "5.5", "--group-size", "32", "--save-only", "--output-dir", str(out)]
    assert main([*argv, "--no-tracking", "--json"]) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)["results"][0]
    folder = out / "mixed"
    types = saved_types(folder)
    int8 = {name for name, kind in types.items() if kind == INT8_TYPE}
    card = (folder / "README.md").read_text()
    assert kept_in_card(card) == report["mixed"]["kept"] and set(kept_in_card(card)) == int8
    assert set(types.values()) == {INT8_TYPE, "IntxUnpackedToInt8Tensor"}
    assert f"| `{report['mixed']['kept'][0]}` |" in card and "1 of " in card
    assert "--int4-mixed 5.5" in card  # the reproduce command
    assert "vllm serve" not in card  # per-layer configs: not claimed
    assert f"| torchao config | `FqnToConfig({len(report['mixed']['kept'])} layers Int8WeightOnlyConfig(), " in card
    config = json.loads((folder / "config.json").read_text())["quantization_config"]["quant_type"]["default"]
    assert config["_type"] == "FqnToConfig"
    assert "_default" not in config["_data"]["fqn_to_config"]  # torchao deprecates it


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--int4-mixed", "9"], "less than int8's 8"),
        (["--int4-mixed", "5.5", "--quant-type", "int8_weight_only"], "applies to int4 types"),
        (["--int4-mixed", "5.5", "--int4-method", "rtn"], "use --int4-method asym, hqq or gptq"),
        (["--int4-mixed", "5.5", "--quant-type", "int8_dynamic_int4_weight"], "int8 activations"),
    ],
)
def test_a_mixed_job_that_cannot_be_made_is_refused_before_any_work(tiny_model, tmp_path, capsys, extra, phrase):
    out = tmp_path / "out"
    types = [] if "--quant-type" in extra else ["--quant-type", "int4_weight_only"]
    argv = [str(tiny_model(SHAPE)), "m", *types, *extra, "--save-only", "--output-dir", str(out), "--no-tracking"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert phrase in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def sharded_source(tiny_model, tmp_path_factory) -> Path:
    """The tiny model in small shards: the embedding and each decoder layer's weights in shards of their own."""
    folder = tmp_path_factory.mktemp("mixed-sharded")
    AutoModelForCausalLM.from_pretrained(tiny_model(SHAPE)).save_pretrained(folder, max_shard_size="300KB")
    copy_side_files(tiny_model(SHAPE), folder)
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    return folder


def test_a_streamed_mixed_job_writes_the_same_tensors_as_the_whole_model(sharded_source, tmp_path, capsys):
    """The streaming engine measures each layer from its shards, one decoder layer at a time, and keeps the same
    layers in int8 as the whole-model engine: the same tensors, the same config.json, the same sensitivities."""
    reports = {}
    for engine in ("whole", "streamed"):
        argv = [str(sharded_source), engine, "--quant-type", "int4_weight_only", "--int4-method", "asym"]
        argv += ["--int4-mixed", "5.5", "--group-size", "32", "--save-only", "--output-dir", str(tmp_path)]
        argv += ["--streaming"] if engine == "streamed" else []
        assert main([*argv, "--no-tracking", "--json"]) == 0, capsys.readouterr().err
        reports[engine] = json.loads(capsys.readouterr().out)["results"][0]
    assert reports["streamed"]["peak_disk_bytes"] is not None and reports["whole"]["peak_disk_bytes"] is None
    assert reports["whole"]["mixed"] == reports["streamed"]["mixed"] and reports["whole"]["mixed"]["kept"]
    whole, streamed = read_tensors(tmp_path / "whole"), read_tensors(tmp_path / "streamed")
    assert set(whole) == set(streamed)
    assert all(same_bytes(whole[k], streamed[k]) for k in whole)
    configs = [json.loads((tmp_path / e / "config.json").read_text())["quantization_config"] for e in reports]
    assert configs[0] == configs[1]
    assert set(kept_in_card((tmp_path / "streamed" / "README.md").read_text())) == set(
        reports["whole"]["mixed"]["kept"]
    )
