"""The dtype a job computes in, measured: `make demo`'s job computing in the source's bf16 against float32, in one run.

    python -m benchmarks.compute_dtype [--avx2-only]

Runs the demo's job (`python -m quantizer.demo`: int8 and GPTQ int4 of the bundled SmolLM2-135M-Instruct) twice in
child processes on this machine, once with QUANTIZER_COMPUTE_DTYPE=source (every forward pass in bf16, as every
job ran before `quantizer.compute`) and once with QUANTIZER_COMPUTE_DTYPE=float32, and records for each: the job's
wall time, the reference pass, GPTQ (with its estimate from `int4.cost`), verification, and each type's figures,
whose agreement between the two dtypes is the table's last part. The weights stored are the same either way
(`tests/test_compute.py`). The job itself picks between the two with a probe (`compute.compute_dtype`); this
benchmark shows what each choice costs here. `--avx2-only` limits both children to AVX2 kernels
(ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2), the way a CPU without native bf16 runs. Writes
results/compute-dtype.{json,md}, or compute-dtype-emulated-bf16.{json,md} on such a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.suite import AVX2_ONLY, RESULTS, ROOT, describe

MODES = {"bf16": "source", "float32": "float32"}  # column label -> QUANTIZER_COMPUTE_DTYPE


def run_demo(env: dict[str, str]) -> tuple[dict, float]:
    """The demo's job in a child process with `env`; its report and wall time."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "quantizer.demo", "--output-dir", out, "--json", "--no-tracking"]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the demo's job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds


def summary(report: dict, seconds: float) -> dict:
    """What the table shows of one run."""
    by_type = {r["quant_type"]: r for r in report["results"]}
    int4 = by_type["int4_weight_only"]
    return {
        "job_seconds": round(seconds, 1),
        "reference_seconds": report["seconds"]["reference"],
        "gptq_seconds": int4["seconds"]["quantize"],
        "gptq_estimated_seconds": int4["int4_estimated_seconds"],
        "verify_seconds": round(sum(r["seconds"]["verify"] for r in report["results"]), 1),
        "compute": report["compute"],
        "ppl_source": report["ppl_source"],
        "types": {
            name: {
                "ppl_delta_pct": r["verify"]["ppl_delta_pct"],
                "top1_agreement": r["verify"]["top1_agreement"],
                "logits_rel_err": r["verify"]["logits_rel_err"],
            }
            for name, r in by_type.items()
        },
    }


def markdown(record: dict, flags: str) -> str:
    runs = record["runs"]
    bf16, fp32 = runs["bf16"], runs["float32"]
    rows = [
        "| computing in | job | reference pass | GPTQ | GPTQ estimated | verification |",
        "|---|---|---|---|---|---|",
    ]
    for label, run in runs.items():
        rows.append(
            f"| {label} | {run['job_seconds']:.0f} s | {run['reference_seconds']:.1f} s | {run['gptq_seconds']:.0f} s "
            f"| {run['gptq_estimated_seconds']:.0f} s | {run['verify_seconds']:.1f} s |"
        )
    rows.append(
        f"| bf16 / float32 | {bf16['job_seconds'] / fp32['job_seconds']:.2f}x "
        f"| {bf16['reference_seconds'] / fp32['reference_seconds']:.2f}x "
        f"| {bf16['gptq_seconds'] / fp32['gptq_seconds']:.2f}x | | "
        f"{bf16['verify_seconds'] / fp32['verify_seconds']:.2f}x |"
    )
    rows += [
        "",
        "| type | ppl Δ in bf16 | ppl Δ in float32 | top-1 in bf16 | top-1 in float32 |",
        "|---|---|---|---|---|",
    ]
    for name in bf16["types"]:
        a, b = bf16["types"][name], fp32["types"][name]
        rows.append(
            f"| {name} | {a['ppl_delta_pct']:+.2f}% | {b['ppl_delta_pct']:+.2f}% "
            f"| {a['top1_agreement']:.1%} | {b['top1_agreement']:.1%} |"
        )
    rows += [
        "",
        f"Source perplexity {bf16['ppl_source']:.2f} computed in bf16, {fp32['ppl_source']:.2f} in float32; on "
        f"{flags}.",
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avx2-only", action="store_true", help="limit both jobs to AVX2 kernels")
    args = parser.parse_args(argv)
    env = {**os.environ, **(AVX2_ONLY if args.avx2_only else {})}
    from quantizer.compute import describe_flags, results_name

    machine = describe(env)
    runs = {}
    for label, setting in MODES.items():
        report, seconds = run_demo({**env, "QUANTIZER_COMPUTE_DTYPE": setting})
        runs[label] = summary(report, seconds)
        print(f"computing in {label}: {seconds:.0f} s", flush=True)
    record = {"machine": machine, "runs": runs}
    name = results_name("compute-dtype", machine)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record, describe_flags(machine))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
