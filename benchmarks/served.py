"""Which types vLLM can serve: every type this CPU makes, written by the real CLI, then read as vLLM reads it.

    python -m benchmarks.served

Quantizes a tiny random Llama with every type made on a CPU, and a tiny random Qwen3-MoE with the types that
quantize its experts, in one CLI job each, and records each output's `quantizer.serving` check (its config.json's
torchao config rebuilt with `config_from_dict`, its tensors against torchao's safetensors allow-list, experts).
Writes results/vllm.{json,md}; `quantizer.suggest` reads the JSON, and `tests/test_serving.py` makes the same
outputs again and compares. Types made on a CUDA GPU only are listed as not checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.suite import RESULTS, ROOT
from benchmarks.tiny_models import build_tiny_family
from quantizer import recipes
from quantizer.demo import prepare
from quantizer.hardware import Hardware

DENSE, MOE = "llama", "qwen3_moe"


def made_on_cpu() -> list[str]:
    return [r.name for r in recipes.RECIPES.values() if r.unsupported_reason(Hardware("cpu")) is None]


def make_outputs(family: str, types: list[str], workdir: Path) -> dict:
    """One CLI job making `types` from a tiny `family` model into workdir/out; its report."""
    source = build_tiny_family(family, workdir / family, prepare())
    argv = [sys.executable, "-m", "quantizer", str(source), family, "--save-only", "--json", "--no-tracking"]
    argv += ["--output-dir", str(workdir / "out"), "--overwrite", "--eval-tokens", "256"]
    for name in types:
        argv += ["--quant-type", name]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {family} job failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def measure(workdir: Path) -> tuple[dict, dict[str, dict]]:
    """The record vllm.json holds, and the two jobs' reports (their outputs stay in `workdir`)."""
    reports = {
        DENSE: make_outputs(DENSE, made_on_cpu(), workdir / "dense"),
        MOE: make_outputs(MOE, recipes.quantizing_experts(Hardware("cpu")), workdir / "moe"),
    }
    dense, moe = ({r["quant_type"]: r["vllm"] for r in reports[f]["results"]} for f in (DENSE, MOE))
    cuda_only = [r.name for r in recipes.RECIPES.values() if r.name not in dense]
    return {"types": dense, "experts": moe, "not_checked": cuda_only}, reports


def markdown(record: dict) -> str:
    rows = ["| type | vLLM loads it | why |", "|---|---|---|"]
    for name, check in record["types"].items():
        rows.append(f"| {name} | {'yes' if check['loads'] else 'no'} | {check['reason']} |")
    for name, check in record["experts"].items():
        rows.append(f"| {name} (MoE, experts quantized) | {'yes' if check['loads'] else 'no'} | {check['reason']} |")
    for name in record["not_checked"]:
        rows.append(f"| {name} | not checked | made on a CUDA GPU only; no GPU made one here |")
    return "\n".join(rows) + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="served-") as tmp:
        record, _ = measure(Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "vllm.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
