"""How long `make test`'s suite takes on this machine, with the CPU named: the figure the README gives beside it.

    python -m benchmarks.suite [--avx2-only]

Runs `python -m pytest` (what `make test` runs after its lint) in a child process, as CI runs it, and writes its
wall time, its closing line and this machine's description (`quantizer.compute.describe_machine`) to
results/test-suite.{json,md}, or results/test-suite-emulated-bf16.{json,md} on a CPU without native bf16.
`--avx2-only` limits the child to AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2): on a CPU with
native bf16 this is how the slow kind of CPU is measured; the machine description then records the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
CLOSING = re.compile(r"\d+ (passed|failed).* in [\d.]+s")  # pytest's last line: "202 passed in 935.57s (0:15:35)"


def describe(env: dict[str, str]) -> dict:
    """The machine as the suite's child sees it (the same limits, the same probe)."""
    script = "import json; from quantizer.compute import describe_machine; print(json.dumps(describe_machine()))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--avx2-only", action="store_true", help="limit the suite to AVX2 kernels")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (default: the whole suite)")
    args = parser.parse_args(argv)
    env = {**os.environ, **(AVX2_ONLY if args.avx2_only else {})}
    from quantizer.compute import describe_flags, results_name

    machine = describe(env)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    closing = next((ln.strip("= ") for ln in reversed(proc.stdout.splitlines()) if CLOSING.search(ln)), "")
    name = results_name("test-suite", machine)
    record = {"seconds": round(seconds, 1), "exit_code": proc.returncode, "closing": closing, "machine": machine}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(
        "| make test's suite | minutes | machine |\n|---|---|---|\n"
        f"| {closing} | {seconds / 60:.1f} | {describe_flags(machine)} |\n"
    )
    print(proc.stdout[-3000:])
    print(f"{seconds / 60:.1f} min, exit {proc.returncode}; written to {RESULTS / name}.json")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
