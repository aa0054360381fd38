"""Where an output can be served, said truthfully: vLLM's reading of every type's saved config and tensors, and the
type suggested for a CPU, a CUDA GPU or vLLM from the committed measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.served import DENSE, MOE, measure
from quantizer import measured, suggest
from quantizer.card import compiled_figure
from quantizer.compute import compute_dtype
from quantizer.serving import check_vllm, folder_headers

RESULTS = measured.RESULTS
INT8 = {"_type": "Int8WeightOnlyConfig", "_version": 2, "_data": {}}


def torchao_config(quant_type) -> dict:
    return {"quantization_config": {"quant_method": "torchao", "quant_type": quant_type}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every type a CPU makes, on a tiny dense model and a tiny MoE, made by the real CLI (`benchmarks.served`)."""
    work = tmp_path_factory.mktemp("served")
    record, reports = measure(work)
    return record, reports


def test_every_types_saved_config_is_read_as_vllm_reads_it_and_matches_the_committed_table(served):
    record, _ = served
    committed = json.loads((RESULTS / "vllm.json").read_text())
    assert record == committed
    assert record["types"]["int8_weight_only"]["loads"]
    assert all(not check["loads"] for check in record["experts"].values())


def test_the_card_offers_vllm_serve_only_where_vllm_reads_the_output(served):
    _, reports = served
    for family in (DENSE, MOE):
        for result in reports[family]["results"]:
            text = (Path(result["output_dir"]) / "README.md").read_text()
            assert ("vllm serve" in text) == result["vllm"]["loads"], (family, result["quant_type"])
            if family == MOE:
                assert "does not serve torchao-quantized MoE experts yet" in text
            # timed in the dtype the job computed in here, and make bench's compiled figure for the type quoted
            assert f"eager, {str(compute_dtype(torch.bfloat16, 'cpu')).removeprefix('torch.')}" in text
            figure = compiled_figure(result["quant_type"], "cpu")
            if figure:
                assert f"compiled with a static cache at {figure['vs_source']}x the compiled source" in text
                assert ("torch.compile(model.forward)" in text) == figure["faster"]
            large = compiled_figure(result["quant_type"], "cpu", large=True)
            if large:  # and the 1.7B random model's, where reading the weights dominates
                assert f"dominates decoding, it measured {large['vs_source']}x the compiled source" in text


def test_the_check_refuses_what_vllm_refuses(served):
    _, reports = served
    output = reports[DENSE]["results"][0]["output_dir"]
    headers = folder_headers(Path(output))
    assert check_vllm(torchao_config({"default": INT8}), headers, experts_quantized=False).loads
    two = check_vllm(torchao_config({"default": INT8, "lm_head": INT8}), headers, experts_quantized=False)
    assert not two.loads and "single 'default'" in two.reason
    unknown = check_vllm(torchao_config({"default": {"_type": "NoSuchConfig"}}), headers, experts_quantized=False)
    assert not unknown.loads and "config_from_dict" in unknown.reason
    assert not check_vllm({}, headers, experts_quantized=False).loads
    other = json.dumps({"_type": "SomeOtherTensor"})
    outside = [{**h, **dict.fromkeys(json.loads(h["tensor_names"]), other)} for h in headers if "tensor_names" in h]
    refused = check_vllm(torchao_config({"default": INT8}), outside, experts_quantized=False)
    assert not refused.loads and "SomeOtherTensor" in refused.reason
    assert not check_vllm(torchao_config({"default": INT8}), headers, experts_quantized=True).loads


@pytest.mark.parametrize("target", sorted(suggest.TABLES))
def test_the_suggestion_follows_the_measured_table(target):
    """The suggested type is within the quality bar where any measured type is, and no such type is faster in its
    fastest measured mode; its row is the committed one, quoted."""
    advice = suggest.suggest(target)
    table = json.loads((RESULTS / f"{advice.table}.json").read_text())["rows"]
    source = next(r for r in table if r["name"] == "source")
    measured = [r for r in table if r["name"] != "source"]
    if target == "vllm":
        measured = [r for r in measured if r["name"] in suggest.served_by_vllm()]
    chosen = next(r for r in measured if r["name"] == advice.quant_type)

    def speed(row: dict) -> float:
        eager = row["tokens_per_second"] / source["tokens_per_second"]
        if row.get("compiled_tokens_per_second") and source.get("compiled_tokens_per_second"):
            return max(eager, row["compiled_tokens_per_second"] / source["compiled_tokens_per_second"])
        return eager

    within = [r for r in measured if r["ppl_delta_pct"] <= suggest.QUALITY_BAR]
    if within:
        assert chosen in within and speed(chosen) == max(speed(r) for r in within)
    else:
        assert chosen["ppl_delta_pct"] == min(r["ppl_delta_pct"] for r in measured)
    committed = (RESULTS / f"{advice.table}.md").read_text().splitlines()
    assert all(line in committed for line in advice.rows.splitlines())
    assert f"| {advice.quant_type} |" in advice.rows


def test_the_cli_suggests_and_the_suggested_command_parses():
    out = subprocess.run(
        [sys.executable, "-m", "quantizer", "--suggest-for", "cpu"], capture_output=True, text=True, check=True
    ).stdout
    advice = suggest.suggest("cpu")
    assert out.startswith(f"For a CPU: {advice.quant_type}") and advice.rows in out
    bad = subprocess.run([sys.executable, "-m", "quantizer", "--suggest-for", "tpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
