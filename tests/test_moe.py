"""Mixture-of-experts models: a job that would leave most weights unquantized is refused before loading, unless
asked for, and every report and card says how much of the Linear-like weights was quantized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from quantizer.cli import main
from quantizer.engine import copy_side_files


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


def expected_share(folder: Path) -> float:
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


def test_a_mostly_unquantized_job_is_refused_before_loading(qwen3_moe, tmp_path, capsys):
    code = main([str(qwen3_moe), "moe", "--save-only", "--output-dir", str(tmp_path), "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{expected_share(qwen3_moe):.0%} of" in err and "model.layers.*.mlp.experts.gate_up_proj" in err
    assert "3-D weights" in err and "--allow-partial" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_asked_for_it_runs_and_says_the_share(qwen3_moe, tmp_path, capsys):
    argv = [str(qwen3_moe), "moe", "--allow-partial", "--save-only", "--output-dir", str(tmp_path)]
    code = main([*argv, "--json", "--no-tracking"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)["results"][0]
    assert result["quantized_share"] == pytest.approx(expected_share(qwen3_moe))
    assert "stay in the source dtype" in captured.err
    card = (tmp_path / "moe" / "README.md").read_text()
    assert (
        f"| share of the Linear-like weights quantized (experts included, output embedding excluded) | | "
        f"{expected_share(qwen3_moe):.1%} |" in card
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"


def test_a_dense_model_is_quantized_whole(tiny_model, tmp_path, capsys):
    code = main([str(tiny_model()), "dense", "--save-only", "--output-dir", str(tmp_path), "--json", "--no-tracking"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["results"][0]["quantized_share"] == 1.0
    assert "| share of the Linear-like weights quantized" in (tmp_path / "dense" / "README.md").read_text()
