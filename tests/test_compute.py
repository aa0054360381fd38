"""The compute dtype: forward passes in float32 where the CPU emulates bf16, in the source's dtype where it is native;
weights stored as the source's either way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from quantizer.cli import main
from tests.support.app_server import ROOT

# A CPU limited the way an AVX2-only AMD EPYC is: this reproduces that machine's figures to the last digit (the
# architecture matrix's deepseek_v3 int8_weight_only logits error, 0.012787749990820885 in bf16, on both)
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# How far a tiny model's figures move between computing in bf16 and in float32 (measured on this model: perplexity
# 0.02-0.2%, logits error 0.0003-0.002 absolute), with room for other CPUs' rounding
PPL_REL = 0.01
LOGITS_ABS = 0.01


def machine_in(env: dict[str, str]) -> dict:
    script = "import json; from quantizer.compute import describe_machine; print(json.dumps(describe_machine()))"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(proc.stdout)


def test_a_cpu_limited_to_avx2_is_measured_to_emulate_bf16_and_computes_in_float32():
    machine = machine_in(AVX2_ONLY)
    assert machine["torch_cpu_capability"] == "AVX2" and machine["forced_isa"] == AVX2_ONLY  # the slow path ran
    assert not machine["native_bf16"] and machine["bf16_matmul_vs_float32"] > 1
    assert machine["compute_dtype_for_bf16"] == "float32"
    assert not machine["int8_matmul_exact"]  # oneDNN's AVX2 int8 kernel saturates without VNNI


def run(source, out, capsys, monkeypatch, compute: str) -> tuple[dict, str]:
    monkeypatch.setenv("QUANTIZER_COMPUTE_DTYPE", compute)
    argv = [str(source), "tiny", "--quant-type", "int8_weight_only", "--quant-type", "int4_weight_only"]
    argv += ["--int4-method", "asym", "--save-only", "--output-dir", str(out), "--json", "--no-tracking"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def assert_same_weights(one: Path, other: Path) -> None:
    """The same tensors, dtypes and torchao metadata (the header's key order may differ from one save to the next)."""
    with safe_open(one / "model.safetensors", "pt") as x, safe_open(other / "model.safetensors", "pt") as y:
        assert x.metadata() == y.metadata() and sorted(x.keys()) == sorted(y.keys())
        for key in x.keys():  # noqa: SIM118 - a safetensors file, not a dict
            assert torch.equal(x.get_tensor(key), y.get_tensor(key)), key
    assert json.loads((one / "config.json").read_text()) == json.loads((other / "config.json").read_text())


def needed_memory(log: str) -> float:
    return float(re.search(r"needs about ([\d.]+) GB of memory", log).group(1))


def test_float32_compute_stores_the_same_weights_and_agrees_with_bf16(tiny_model, tmp_path, capsys, monkeypatch):
    source = tiny_model()
    native, native_log = run(source, tmp_path / "bf16", capsys, monkeypatch, "source")
    upcast, upcast_log = run(source, tmp_path / "f32", capsys, monkeypatch, "float32")
    assert native["compute"] == "computing in bfloat16, the source's dtype"
    assert upcast["compute"] == "computing in float32 (QUANTIZER_COMPUTE_DTYPE=float32); weights stay bfloat16"
    assert upcast["compute"] in upcast_log
    # the upcast is counted: the reference pass holds the source in float32, twice its bf16 bytes
    assert needed_memory(upcast_log) > needed_memory(native_log)
    assert upcast["ppl_source"] == pytest.approx(native["ppl_source"], rel=PPL_REL)
    for a, b in zip(native["results"], upcast["results"], strict=True):
        assert_same_weights(Path(a["output_dir"]), Path(b["output_dir"]))
        assert b["verify"]["ppl_quantized"] == pytest.approx(a["verify"]["ppl_quantized"], rel=PPL_REL)
        assert b["verify"]["logits_rel_err"] == pytest.approx(a["verify"]["logits_rel_err"], abs=LOGITS_ABS)


def test_int8_dynamic_says_when_the_cpus_int8_matmul_saturates(tiny_model, tmp_path):
    """On a CPU limited to AVX2 (no VNNI) torch's int8 matmul adds pairs of products in int16 and saturates: the
    int8_dynamic job says so in its log, its report and its card, and computes the rest in float32."""
    argv = [str(tiny_model()), "tiny", "--quant-type", "int8_dynamic", "--quant-type", "int8_weight_only"]
    argv += ["--save-only", "--output-dir", str(tmp_path), "--json", "--no-tracking"]
    env = {k: v for k, v in os.environ.items() if k != "QUANTIZER_COMPUTE_DTYPE"}
    proc = subprocess.run(
        [sys.executable, "-m", "quantizer", *argv],
        cwd=ROOT,
        env={**env, **AVX2_ONLY},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["compute"].startswith("computing in float32: this CPU multiplies bfloat16")
    dynamic, weight_only = report["results"]
    assert any("int8 matmul saturates" in note for note in dynamic["notes"])
    assert not any("saturates" in note for note in weight_only["notes"])  # weight-only int8 runs no int8 matmul
    assert "int8 matmul saturates" in proc.stderr
    assert "int8 matmul saturates" in (tmp_path / "tiny-int8dq" / "README.md").read_text()
