"""Every code block in README.md and docs/ runs as written, against the loopback Hub and the running app.

Only the placeholders a reader replaces are swapped for test values (PLACEHOLDERS), and the Hub
ids the examples name exist on the loopback Hub as tiny models. Python blocks run in a fresh
process; shell blocks run line by line in a fresh shell, with three documented exceptions that a
test cannot run as they are: `make` lines run as `make -n` (`make test` is this suite, `make demo`
and `make bench` are measured by their own tests, `make app` serves until stopped), and benchmark
lines (`python -m benchmarks.…`, minutes long) run with `--help`. ```text blocks are synopses.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from quantizer import settings as host_settings
from tests.conftest import ALICE, HUB
from tests.support.app_server import ROOT, AppServer
from tests.support.hub_repos import upload_model, variant
from tests.support.models import TinyShape

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUNNABLE = {"python", "bash"}
HF_TB = "hf_HuggingFaceTB_WRITE_5e4d3c2b1a"  # owns the example sources' namespace on the loopback Hub
HUB.state.add_user(HF_TB, "HuggingFaceTB")


def code_blocks(path: Path) -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in BLOCK.finditer(path.read_text())]


def test_every_block_is_python_bash_or_a_text_synopsis():
    for path in DOCS:
        for lang, code in code_blocks(path):
            assert lang in (*RUNNABLE, "text"), f"{path.name}: a ```{lang} block the suite cannot run:\n{code}"


@pytest.fixture(scope="module")
def examples(hub, tiny_model, tmp_path_factory):
    """The repos and folders the examples name, and the placeholders swapped for test values."""
    base = tmp_path_factory.mktemp("docs")
    tb = HfApi(token=HF_TB)
    for repo in ("HuggingFaceTB/SmolLM3-3B", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        upload_model(tb, repo, variant(tiny_model(), base / repo.split("/")[1]))
    sha = upload_model(HfApi(token=ALICE), "alice/my-finetune", variant(tiny_model(), base / "my-finetune"))
    work = base / "cwd"  # where shell examples run: ./my-model is a local model folder
    work.mkdir()
    variant(tiny_model(TinyShape(hidden=128, intermediate=256)), work / "my-model")
    app = AppServer(base / "app.log").start()
    yield {
        "cwd": work,
        "placeholders": {
            "me/my-finetune@v1.2": f"alice/my-finetune@{sha}",
            "my-org/": "acme/",
            "http://127.0.0.1:7860/": app.url,
            "hf_your_write_token": ALICE,
            "your-name": "alice",
        },
    }
    app.stop()


def environment() -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_TOKEN": ALICE,  # the README's commands read the token from the environment
        "PYTHONUNBUFFERED": "1",
    }


def swap(code: str, placeholders: dict[str, str]) -> str:
    for placeholder, value in placeholders.items():
        code = code.replace(placeholder, value)
    return code


def shell_line(line: str) -> str:
    """The line as the test runs it (see the module docstring for the two exceptions)."""
    command = line.split("#")[0].strip()
    words = shlex.split(command)
    if words[0] == "make":
        return shlex.join(["make", "-n", "-C", str(ROOT), *words[1:]])
    if words[:2] == ["python", "-m"] and words[2].startswith("benchmarks."):
        return shlex.join([*words[:3], "--help"])
    return command


def run_block(lang: str, code: str, examples: dict) -> subprocess.CompletedProcess:
    code = swap(code, examples["placeholders"])
    if lang == "python":
        argv = [sys.executable, "-c", code]
    else:
        lines = [shell_line(x) for x in code.splitlines() if x.strip() and not x.strip().startswith("#")]
        argv = ["bash", "-euo", "pipefail", "-c", "\n".join(lines)]
    return subprocess.run(
        argv, cwd=examples["cwd"], env=environment(), capture_output=True, text=True, timeout=600, check=False
    )


WITH_CODE = [d for d in DOCS if any(lang in RUNNABLE for lang, _ in code_blocks(d))]


@pytest.mark.parametrize("doc", WITH_CODE, ids=lambda p: p.name)
def test_every_code_block_runs_as_written(doc, examples):
    pushed = "alice/SmolLM2-135M-Instruct-torchao-int8wo"  # what the README's API example pushes
    if doc.name != "README.md" and not HfApi(token=ALICE).repo_exists(pushed):  # this doc run on its own
        argv = ["python", "-m", "quantizer", "HuggingFaceTB/SmolLM2-135M-Instruct", "--no-tracking"]
        assert run_block("bash", shlex.join(argv), examples).returncode == 0
    ran = 0
    for lang, code in code_blocks(doc):
        if lang not in RUNNABLE:
            continue
        proc = run_block(lang, code, examples)
        assert proc.returncode == 0, (
            f"{doc.name} block failed:\n{code}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
        assert ALICE not in proc.stdout + proc.stderr
        ran += 1
    assert ran > 0
    if doc.name == "README.md":  # what the README's examples say they make
        api = HfApi(token=ALICE)
        for repo in (
            "alice/SmolLM3-3B-torchao-int8wo",
            "alice/SmolLM3-3B-torchao-int4wo",
            "alice/SmolLM2-135M-Instruct-torchao-int8wo",
        ):
            assert api.repo_exists(repo), repo
        assert api.model_info("acme/my-finetune-int8").private
        assert (examples["cwd"] / "out" / "my-model" / "config.json").is_file()


MEASURE = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?\s?(?:%|MB|GB|KB|ms|s|min|minutes|seconds|x)(?![\w])")


def settings() -> dict[str, str]:
    """Numbers in the prose that are settings or formulas, not measurements: each with the value the code or the
    formula gives, so a changed setting fails here until the prose follows."""
    from spaces.zero.client import PRO_QUOTA_MINUTES

    from quantizer import resources, suggest, texts, verify
    from ui import limits, worker

    gptq_budget = host_settings.default("QUANTIZER_GPTQ_BUDGET")

    def share(bytes_per_weight: float) -> float:
        return bytes_per_weight / 2  # of bf16's two bytes

    return {
        "20%": f"{verify.TOP1_FLOOR:.0%}",
        "20 GB": f"{host_settings.default('QUANTIZER_DISK_QUOTA') / 1e9:.0f} GB",
        "15 minutes": f"{host_settings.default('QUANTIZER_GPTQ_BUDGET') / 60:.0f} minutes",
        "15 min": f"{host_settings.default('QUANTIZER_GPTQ_BUDGET') / 60:.0f} min",
        "1.25 x": f"{resources.MEMORY_FACTOR} x",
        "0.6 GB": f"{resources.RUNTIME_BYTES / 1e9:.1f} GB",
        "50%": f"{share(1):.0%}",  # int8 per row: one byte a weight
        "56%": f"{share(1 + 4 / 32):.0%}",  # Intx int4: one byte a value, bf16 scale and zero per group of 32
        "26.6%": f"{share(0.5 + 4 / 128):.1%}",  # tile-packed: half a byte a value, scale and zero per 128
        "1.7 GB": "1.7 GB",  # the memory limit the larger-than-memory benchmark sets (its --limit-bytes)
        "300 s": f"{host_settings.default('QUANTIZER_ZEROGPU_SECONDS')} s",
        "40 minutes": f"{PRO_QUOTA_MINUTES} minutes",  # what spaces' own message offers PRO accounts
        "90%": f"{worker.MEMORY_SHARE:.0%}",
        "25 minutes": f"{(gptq_budget + limits.VERIFY_AND_PUSH_SECONDS) / 60:.0f} minutes",
        "10 s": f"{texts.TEMPLATE_SECONDS:g} s",
        "1%": f"{suggest.QUALITY_BAR:g}%",  # the perplexity a suggested type may lose
    }


def prose_lines(path: Path, results: str) -> list[str]:
    """Every line outside code blocks, hand-written tables included; a table line copied from a results file is
    checked by the results tests instead."""
    lines, in_code = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and not (line.startswith("|") and line in results):
            lines.append(line)
    return lines


def test_every_number_in_the_prose_is_a_measured_result_or_a_named_setting():
    results = "\n".join(p.read_text() for p in (ROOT / "benchmarks" / "results").glob("*.*") if p.suffix != ".png")
    known = settings()
    for name, value in known.items():
        assert name == value, f"the prose says {name}; the code says {value}"
    for doc in DOCS:
        for line in prose_lines(doc, results):
            for number in MEASURE.findall(line):
                value = re.match(r"[+-]?(\d+(?:\.\d+)?)", number)[1]  # results tables put units in headers
                measured = re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", results)
                assert measured or number in known, f"{doc.name}: {number!r} in: {line}"


def test_the_readme_lists_every_setting_as_the_code_defines_it():
    assert host_settings.markdown_table() in (ROOT / "README.md").read_text()
