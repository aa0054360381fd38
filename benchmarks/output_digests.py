"""Every output's tensors as digests: run before and after a refactor to show the outputs did not change.

    python -m benchmarks.output_digests OUT.json [--compare BEFORE.json]

Runs every type this CPU makes (and every int4 method for the int4 types) on a tiny random SmolLM3 and on a
tiny mixture of experts, through the CLI as a user does (--save-only), with the whole-model engine and the
streaming engine, and writes one SHA-256 per saved tensor (its dtype, shape and bytes; a torchao tensor by its
inner tensors). `--compare` prints which tensors differ from an earlier run and exits 1 when any does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from quantizer import int4, recipes
from quantizer.cli import main
from quantizer.demo import prepare
from quantizer.hardware import Hardware

from .tiny_models import build_tiny_family, build_tiny_smollm3

CPU = Hardware("cpu")
TYPES = [r.name for r in recipes.RECIPES.values() if r.unsupported_reason(CPU) is None]
OPTIONS = ["--eval-tokens", "256", "--calibration-tokens", "256", "--no-tracking", "--device", "cpu", "--save-only"]


def runs() -> list[tuple[str, str, list[str]]]:
    """(model, label, CLI options) for every type, int4 method and engine."""
    found = []
    for quant_type in TYPES:
        recipe = recipes.get(quant_type)
        methods = list(int4.METHODS) if recipe.int4_format(CPU) else [None]
        for method in methods:
            for engine in ("whole", "streaming"):
                options = ["--quant-type", quant_type, f"--{'no-' if engine == 'whole' else ''}streaming"]
                options += ["--int4-method", method] if method else []
                found.append(("smollm3", f"{quant_type}/{method or '-'}/{engine}", options))
    found.append(("qwen3_moe", "int8_weight_only/-/whole", ["--quant-type", "int8_weight_only", "--no-streaming"]))
    found.append(("qwen3_moe", "int8_weight_only/-/streaming", ["--quant-type", "int8_weight_only", "--streaming"]))
    return found


def digests(folder: Path) -> dict[str, str]:
    """One digest per tensor of every safetensors file in `folder`, and one of its config.json's quantization."""
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in sorted(f.keys()):
                tensor = f.get_tensor(name).contiguous()
                raw = tensor.view(-1).view(dtype=torch.uint8) if tensor.numel() else tensor
                digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode() + raw.numpy().tobytes())
                found[name] = digest.hexdigest()[:16]
    config = json.loads((folder / "config.json").read_text())
    found["config.quantization_config"] = hashlib.sha256(
        json.dumps(config.get("quantization_config"), sort_keys=True).encode()
    ).hexdigest()[:16]
    return found


def measure(out: Path) -> dict[str, dict[str, str]]:
    tokenizer = prepare()
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "smollm3": build_tiny_smollm3(Path(tmp) / "smollm3", tokenizer),
            "qwen3_moe": build_tiny_family("qwen3_moe", Path(tmp) / "qwen3_moe", tokenizer),
        }
        for model, label, options in runs():
            target = Path(tmp) / "out" / f"{model}-{label.replace('/-/', '/none/').replace('/', '-')}"
            errors = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
                code = main([str(models[model]), target.name, "--output-dir", str(target.parent), *OPTIONS, *options])
            key = f"{model}:{label}"
            why = errors.getvalue().strip().splitlines()[-1:] if code else []
            results[key] = digests(target) if code == 0 else {"failed": f"exit {code}: {' '.join(why)}"}
            print(key, "ok" if code == 0 else results[key]["failed"], flush=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def compare(before: dict, after: dict) -> list[str]:
    differ = []
    for key in sorted(set(before) & set(after)):  # an output only one run has (a new method) is not compared
        old, new = before[key], after[key]
        changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        if changed:
            differ.append(f"{key}: {len(changed)} differ ({', '.join(changed[:4])}{'...' if len(changed) > 4 else ''})")
    return differ


def main_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path, help="an earlier run's JSON")
    args = parser.parse_args(argv)
    after = measure(args.out)
    if args.compare:
        differ = compare(json.loads(args.compare.read_text()), after)
        before = json.loads(args.compare.read_text())
        both = [key for key in after if key in before]
        tensors = sum(len(after[key]) for key in both)
        print("\n".join(differ) or f"all {len(both)} outputs of both runs byte-identical ({tensors} tensors)")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
