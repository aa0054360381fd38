"""Streaming vs the TorchAoConfig path on a synthetic SmolLM3-shaped model, and the larger-than-memory case.

    python -m benchmarks.streaming compare [--size-gb 2] [--shard-mb 500]   # both engines, one run
    python -m benchmarks.streaming scale [--size-gb 30]                     # streaming only, > RAM

Each engine runs in its own process; its peak RSS is the kernel's maximum resident set size for
that process (what GNU `time -v` reports, file-backed pages included), read with wait4. Only
quantize + save is timed (verification is the same for both and not part of the comparison).
Results go to benchmarks/results/streaming-*.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from quantizer.report import human_bytes
from quantizer.safetensors_io import weights_bytes

RESULTS = Path(__file__).resolve().parent / "results"
LAYER_SHAPES = {  # SmolLM3-3B's shapes
    "self_attn.q_proj.weight": (2048, 2048),
    "self_attn.k_proj.weight": (512, 2048),
    "self_attn.v_proj.weight": (512, 2048),
    "self_attn.o_proj.weight": (2048, 2048),
    "mlp.gate_proj.weight": (11008, 2048),
    "mlp.up_proj.weight": (11008, 2048),
    "mlp.down_proj.weight": (2048, 11008),
    "input_layernorm.weight": (2048,),
    "post_attention_layernorm.weight": (2048,),
}
VOCAB, HIDDEN = 128256, 2048


def config(layers: int) -> dict:
    return {
        "architectures": ["SmolLM3ForCausalLM"],
        "model_type": "smollm3",
        "hidden_size": HIDDEN,
        "intermediate_size": 11008,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "rope_theta": 5000000.0,
        "hidden_act": "silu",
        "dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "no_rope_layers": [1] * layers,
        "use_cache": True,
    }


def make_synthetic(folder: Path, size_gb: float, shard_mb: int) -> Path:
    """Write a random bf16 SmolLM3-shaped checkpoint of about `size_gb` in `shard_mb` shards, tensor by tensor."""
    per_layer = sum(torch.Size(s).numel() for s in LAYER_SHAPES.values()) * 2
    layers = max(1, round((size_gb * 1e9 - VOCAB * HIDDEN * 2) / per_layer))
    if (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text())[
        "num_hidden_layers"
    ] == layers:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        names += [(f"model.layers.{i}.{k}", s) for k, s in LAYER_SHAPES.items()]
    names.append(("model.norm.weight", (HIDDEN,)))
    # one pool of random bf16 values, sliced at a different offset for each tensor: drawing 15G fresh
    # normals on 2 cores would take longer than the benchmark itself, and quantization cost does not care
    generator = torch.Generator().manual_seed(0)
    pool = (torch.randn(64 * 2**20, generator=generator) * 0.02).to(torch.bfloat16)
    largest = max(torch.Size(shape).numel() for _, shape in names)
    pool = pool.repeat((largest + pool.numel()) // pool.numel() + 1)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    weight_map, files = {}, []

    def flush() -> None:
        name = f"part-{len(files):05d}.safetensors"
        save_file(shards[-1], str(folder / name), metadata={"format": "pt"})
        files.append(name)
        for key in shards[-1]:
            weight_map[key] = name
        shards[-1] = {}

    for index, (key, shape) in enumerate(names):
        numel = torch.Size(shape).numel()
        offset = (index * 7919 * 1024) % (pool.numel() - numel)
        t = (
            torch.ones(shape, dtype=torch.bfloat16)
            if len(shape) == 1
            else pool[offset : offset + numel].view(shape).clone()
        )
        if size + t.numel() * 2 > shard_mb * 1e6 and shards[-1]:
            flush()
            size = 0
        shards[-1][key] = t
        size += t.numel() * 2
    flush()
    n = len(files)
    final = {}
    for i, name in enumerate(files):
        new = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (folder / name).rename(folder / new)
        final.update({k: new for k, v in weight_map.items() if v == name})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": final}))
    (folder / "config.json").write_text(json.dumps(config(layers), indent=2))
    return folder


def run_engine(engine: str, source: Path, out: Path, quant_type: str) -> dict:
    """One engine in a child process: wall seconds and peak RSS (wait4's ru_maxrss)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.streaming",
            "engine",
            engine,
            str(source),
            str(out),
            "--quant-type",
            quant_type,
        ]
    )
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{engine} failed")
    return {
        "engine": engine,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "output_bytes": weights_bytes(out),
    }


def engine_main(engine: str, source: Path, out: Path, quant_type: str) -> None:
    import quantizer  # noqa: F401 - quiet torchao
    from quantizer import recipes
    from quantizer.console import quiet_libraries
    from quantizer.events import EventStream
    from quantizer.hardware import Hardware
    from quantizer.streaming import stream_quantize
    from quantizer.whole_model import quantize_and_save

    quiet_libraries()
    cpu = Hardware("cpu")
    cfg = recipes.get(quant_type).config(cpu, 128)
    if engine == "standard":
        quantize_and_save(source, out, cfg, cpu, EventStream(), quant_type)
    else:
        # check_layers=0: the sampled layer check is verification, left out as the standard path's is
        stream_quantize(
            source,
            out,
            json.loads((source / "config.json").read_text()),
            cfg,
            EventStream(),
            quant_type,
            check_layers=0,
        )


def identical(a: Path, b: Path) -> tuple[int, int]:
    """(tensors compared, tensors whose bytes differ) between two checkpoint folders."""

    def index(folder: Path) -> dict[str, Path]:
        found = {}
        for p in folder.glob("*.safetensors"):
            with safe_open(str(p), "pt") as f:
                found.update(dict.fromkeys(f.keys(), p))
        return found

    left, right = index(a), index(b)
    assert set(left) == set(right), set(left) ^ set(right)
    differ = 0
    for key in left:
        with safe_open(str(left[key]), "pt") as f, safe_open(str(right[key]), "pt") as g:
            x, y = f.get_tensor(key), g.get_tensor(key)
            differ += not (x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)))
    return len(left), differ


def check_against_reference(source: Path, out: Path, quant_type: str, count: int = 4) -> int:
    """Quantize `count` source weights the way transformers' TorchAoConfig does (torchao's quantize_ on a bf16
    nn.Linear that holds the weight), written out here rather than taken from the streaming engine, and compare
    the bytes with the output."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.quantization import quantize_

    import quantizer  # noqa: F401
    from quantizer import recipes
    from quantizer.hardware import Hardware

    def reference(weight: torch.Tensor, cfg) -> torch.Tensor:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
        quantize_(linear, cfg)
        return linear.weight

    weight_map = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    keys = [k for k in weight_map if k.endswith("proj.weight")]
    keys = [keys[0], keys[len(keys) // 3], keys[2 * len(keys) // 3], keys[-1]][:count]
    out_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    cfg = recipes.get(quant_type).config(Hardware("cpu"), 128)
    matched = 0
    for key in keys:
        with safe_open(str(source / weight_map[key]), "pt") as f:
            weight = f.get_tensor(key)
        flat, _ = flatten_tensor_state_dict({key: reference(weight, cfg)})
        same = True
        for flat_key, expected in flat.items():
            with safe_open(str(out / out_map[flat_key]), "pt") as g:
                got = g.get_tensor(flat_key)
            same &= torch.equal(got.view(torch.uint8), expected.contiguous().view(torch.uint8))
        matched += same
    return matched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("compare", "scale", "engine"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--size-gb", type=float, default=None)
    parser.add_argument("--shard-mb", type=int, default=500)
    parser.add_argument("--quant-type", default="int8_weight_only")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "quantizer-streaming-bench")
    args = parser.parse_args(argv)
    if args.mode == "engine":
        engine_main(args.args[0], Path(args.args[1]), Path(args.args[2]), args.quant_type)
        return 0
    size = args.size_gb or (2.0 if args.mode == "compare" else 30.0)
    source = make_synthetic(args.workdir / f"synthetic-{size:g}gb", size, args.shard_mb)
    source_bytes = weights_bytes(source)
    rows = []
    engines = ("standard", "streaming") if args.mode == "compare" else ("streaming",)
    for engine in engines:
        out = args.workdir / f"out-{engine}-{size:g}gb"
        shutil.rmtree(out, ignore_errors=True)
        rows.append(run_engine(engine, source, out, args.quant_type))
    lines = [
        f"Synthetic SmolLM3-shaped model, {human_bytes(source_bytes)} bf16 in {args.shard_mb} MB shards, "
        f"{args.quant_type}, quantize + save only (verification, including streaming's sampled layer check, "
        "left out of both), one process per engine; 2-core CPU, "
        f"{human_bytes(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))} RAM.",
        "",
        "| engine | time (s) | peak RSS | vs standard | output | disk used (source + output) |",
        "|---|---|---|---|---|---|",
    ]
    base = rows[0]
    for row in rows:
        ratio = (
            f"{row['peak_rss_bytes'] / base['peak_rss_bytes']:.0%} RSS, {row['seconds'] / base['seconds']:.2f}x time"
        )
        lines.append(
            f"| {row['engine']} | {row['seconds']:.1f} | {human_bytes(row['peak_rss_bytes'])} | "
            f"{ratio if args.mode == 'compare' else '-'} | {human_bytes(row['output_bytes'])} | "
            f"{human_bytes(source_bytes + row['output_bytes'])} |"
        )
    extra = {}
    if args.mode == "compare":
        compared, differ = identical(
            args.workdir / f"out-standard-{size:g}gb", args.workdir / f"out-streaming-{size:g}gb"
        )
        extra = {"tensors_compared": compared, "tensors_differing": differ}
        lines += ["", f"Output tensors compared: {compared}; differing bytes: {differ}."]
    else:
        matched = check_against_reference(source, args.workdir / f"out-streaming-{size:g}gb", args.quant_type)
        extra = {"reference_tensors_matched": matched}
        lines += [
            "",
            f"{matched} of 4 sampled weights match an independent reference quantization (torchao's quantize_ on a "
            "bf16 nn.Linear, written in the benchmark) byte for byte.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"streaming-{args.mode}"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"source_bytes": source_bytes, "rows": rows, **extra}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
