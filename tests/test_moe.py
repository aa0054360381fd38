"""Mixture-of-experts models through the CLI: the experts are quantized by the types that can, a type that cannot
is refused before loading unless asked for, and every report and card says how much was quantized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torchao.utils import TorchAOBaseTensor
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.tiny_models import FAMILIES, TINY_BASE, build_tiny_family
from quantizer import recipes
from quantizer.cli import main
from quantizer.coverage import check_written
from quantizer.errors import QuantizationError
from quantizer.events import EventStream
from quantizer.experts import covering
from quantizer.hardware import Hardware
from quantizer.layers import WeightShare, count_linear_layers
from quantizer.layerwise import LayerwiseEvaluator
from quantizer.source import copy_side_files
from quantizer.streaming import stream_quantize
from quantizer.texts import EvalData
from quantizer.whole_model import quantize_and_save
from tests.test_families import EXPERT_TYPES
from tests.test_streaming import no_fit_limit, same_bytes

CPU = Hardware("cpu")
SHARE_ROW = "| share of the Linear-like weights quantized (experts included, output embedding excluded) | | "


@pytest.fixture(scope="module")
def qwen3_moe(demo_model, tmp_path_factory) -> Path:
    """A tiny random Qwen3-MoE with the real tokenizer: its experts are 3-D weights, not nn.Linear layers."""
    folder = tmp_path_factory.mktemp("qwen3-moe")
    config = AutoConfig.for_model(
        "qwen3_moe",
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=16,
        num_experts_per_tok=2,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    copy_side_files(demo_model, folder)
    return folder


def linear_share(folder: Path) -> float:
    """Counted from the checkpoint itself (transformers saves each expert's projections separately): the
    attention projections against those plus every expert's weights."""
    linear = experts = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - a safetensors file, not a dict
            numel = torch.Size(f.get_slice(name).get_shape()).numel()
            if ".experts." in name:
                experts += numel
            elif name.endswith("_proj.weight"):
                linear += numel
    return linear / (linear + experts)


def run(argv: list[str], capsys) -> tuple[int, str, dict | None]:
    code = main([*argv, "--json", "--no-tracking", "--eval-tokens", "256"])
    captured = capsys.readouterr()
    return code, captured.err, json.loads(captured.out) if captured.out.strip() else None


def test_int8_quantizes_the_experts_and_stock_transformers_runs_them(qwen3_moe, tmp_path, capsys):
    code, err, report = run([str(qwen3_moe), "moe", "--save-only", "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    result = report["results"][0]
    assert result["quantized_share"] == 1.0 and result["status"] == "ok"
    assert "the experts (model.layers.*.mlp.experts.gate_up_proj, model.layers.*.mlp.experts.down_proj) are " in err
    out = tmp_path / "moe"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        qdata = f.get_tensor("model.layers.0.mlp.experts._gate_up_proj_qdata")
    assert qdata.dtype == torch.int8 and tuple(qdata.shape) == (16, 128, 64)  # all 16 experts, 2 x 64 rows, 64 wide
    assert json.loads((out / "config.json").read_text())["experts_implementation"] == "eager"
    assert f"{SHARE_ROW}100.0% |" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)  # stock transformers, nothing passed
    source = AutoModelForCausalLM.from_pretrained(qwen3_moe)
    assert type(model.model.layers[1].mlp.experts.down_proj).__name__ == "Int8Tensor"
    ids = torch.randint(0, 49152, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(ids).logits.float(), source(ids).logits.float()
    assert ((got - want).norm() / want.norm()).item() < 0.05


def test_a_type_that_cannot_quantize_the_experts_is_refused_before_loading(qwen3_moe, tmp_path, capsys):
    argv = [str(qwen3_moe), "moe", "--quant-type", "int4_weight_only", "--save-only", "--output-dir", str(tmp_path)]
    code, err, _ = run(argv, capsys)
    assert code == 2
    assert f"would quantize {linear_share(qwen3_moe):.0%} of" in err
    assert "model.layers.*.mlp.experts.gate_up_proj" in err and "Intx int4 tensor takes 2-D weights only" in err
    assert "Use int8_weight_only, int8_dynamic, float8_weight_only, which quantize the experts too" in err
    assert "--allow-partial" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_asked_for_it_runs_and_says_the_share(qwen3_moe, tmp_path, capsys):
    argv = [str(qwen3_moe), "moe", "--quant-type", "int4_weight_only", "--allow-partial", "--save-only"]
    code, err, report = run([*argv, "--output-dir", str(tmp_path), "--int4-method", "asym"], capsys)
    assert code == 0, err
    result = report["results"][0]
    assert result["quantized_share"] == pytest.approx(linear_share(qwen3_moe))
    assert "left in the source dtype: the experts" in err
    assert f"{SHARE_ROW}{linear_share(qwen3_moe):.1%} |" in (tmp_path / "moe" / "README.md").read_text()
    row = next(line for line in err.splitlines() if line.startswith("| int4_weight_only | ok |"))
    assert f"| {linear_share(qwen3_moe):.0%} |" in row  # the command line's table has the share too
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert model.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.bfloat16


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors.update({key: f.get_tensor(key) for key in f.keys()})  # noqa: SIM118 - a safetensors file
    return tensors


@pytest.fixture(scope="module")
def sharded_moe(demo_model, tmp_path_factory) -> dict[str, Path]:
    """Tiny Qwen3-MoE (experts as mlp.experts.N.gate_proj/up_proj/down_proj) and Mixtral (block_sparse_moe.experts.N.
    w1/w3/w2) saved in 1 MB shards, so a layer's experts are spread over several shards."""
    folders = {}
    for family in ("qwen3_moe", "mixtral"):
        whole = build_tiny_family(family, tmp_path_factory.mktemp(f"{family}-whole"), demo_model)
        folder = tmp_path_factory.mktemp(f"{family}-sharded")
        AutoModelForCausalLM.from_pretrained(whole).save_pretrained(folder, max_shard_size="1MB")
        copy_side_files(demo_model, folder)
        folders[family] = folder
    return folders


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
@pytest.mark.parametrize("quant_type", sorted(EXPERT_TYPES))
def test_streaming_merges_and_quantizes_the_experts_as_the_whole_model_path_does(
    family, quant_type, sharded_moe, tmp_path
):
    source = sharded_moe[family]
    config_dict = json.loads((source / "config.json").read_text())
    recipe = recipes.get(quant_type)
    config = recipe.config(CPU, 128)
    standard = tmp_path / "standard"
    quantize_and_save(
        source, standard, covering(config, config_dict), CPU, EventStream(), quant_type, None, recipe.experts_forward
    )
    streamed = stream_quantize(
        source,
        tmp_path / "streamed",
        config_dict,
        config,
        EventStream(),
        quant_type,
        quantize_experts=True,
        experts_forward=recipe.experts_forward,
    )
    ours, theirs = read_tensors(tmp_path / "streamed"), read_tensors(standard)
    assert set(ours) == set(theirs) and any("experts._gate_up_proj_qdata" in key for key in ours)
    assert all(same_bytes(ours[key], theirs[key]) for key in ours)
    configs = [json.loads((folder / "config.json").read_text()) for folder in (tmp_path / "streamed", standard)]
    assert configs[0]["quantization_config"] == configs[1]["quantization_config"]
    assert configs[0].get("experts_implementation") == configs[1].get("experts_implementation")
    assert streamed.counts.quantized == count_linear_layers(AutoModelForCausalLM.from_pretrained(standard)).quantized
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")  # stock transformers
    assert isinstance(model.model.layers[1].mlp.experts.gate_up_proj, TorchAOBaseTensor)
    ids = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, AutoModelForCausalLM.from_pretrained(standard)(ids).logits)


@pytest.fixture(scope="module")
def mostly_experts(demo_model, tmp_path_factory) -> Path:
    """A tiny Mixtral whose experts (19 MB) outweigh its embedding, in 1 MB shards: it can stream where neither it
    nor its output loads whole."""
    config = AutoConfig.for_model(
        "mixtral", **{**TINY_BASE, "intermediate_size": 1536, "num_hidden_layers": 4, **FAMILIES["mixtral"]}
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mostly-experts")
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder, max_shard_size="1MB")
    copy_side_files(demo_model, folder)
    return folder


def test_a_mixture_of_experts_larger_than_memory_streams_with_its_experts(
    mostly_experts, tmp_path, capsys, monkeypatch
):
    source = mostly_experts
    monkeypatch.setenv("QUANTIZER_MEMORY_LIMIT", str(no_fit_limit(source)))  # neither source nor output loads whole
    code, err, report = run([str(source), "big", "--save-only", "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert "streaming engine: one shard at a time" in err
    result = report["results"][0]
    assert result["quantized_share"] == 1.0
    checked = result["verify"]["checked"]
    assert "output error of 8 Linear layers" in checked and "the output is larger than memory" in checked
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "big")
    assert type(model.model.layers[0].mlp.experts.down_proj).__name__ == "Int8Tensor"


def test_streaming_a_mixture_of_experts_without_merge_rules_is_refused(demo_model, tmp_path, capsys):
    source = build_tiny_family("granitemoe", tmp_path / "granitemoe", demo_model)
    argv = [str(source), "moe", "--streaming", "--save-only", "--output-dir", str(tmp_path / "out")]
    code, err, _ = run(argv, capsys)
    assert code == 2
    assert "knows no rule to merge the per-expert tensors of its model type 'granitemoe'" in err
    assert not (tmp_path / "out").exists()


def test_a_dense_model_is_quantized_whole(tiny_model, tmp_path, capsys):
    code, err, report = run([str(tiny_model()), "dense", "--save-only", "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert report["results"][0]["quantized_share"] == 1.0
    assert f"{SHARE_ROW}100.0% |" in (tmp_path / "dense" / "README.md").read_text()


def test_an_output_mostly_left_unquantized_is_not_called_done():
    share = WeightShare(quantized=1, total=4, left=("model.layers.*.mlp.experts.down_proj",), left_kinds=("experts",))
    with pytest.raises(QuantizationError, match=r"quantized only 25% .* model\.layers\.\*\.mlp\.experts\.down_proj"):
        check_written(share, "int8_weight_only", allow_partial=False)
    check_written(share, "int8_weight_only", allow_partial=True)
    check_written(WeightShare(quantized=1, total=2, left=("x",)), "int8_weight_only", allow_partial=False)


def test_the_layer_by_layer_check_says_it_does_not_read_experts_yet(qwen3_moe):
    config = json.loads((qwen3_moe / "config.json").read_text())
    evaluator = LayerwiseEvaluator(config, EvalData([], torch.zeros(1, 8, dtype=torch.long), None), 1 << 30)
    assert evaluator.stopped == (
        "the layer-by-layer check does not read a mixture of experts' per-expert checkpoint tensors yet"
    )
    assert evaluator.result() is None
