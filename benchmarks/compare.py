"""`make bench`: every quantization type the hardware runs, measured side by side against the source.

    python -m benchmarks.compare [MODEL] [--types T ...] [--repeats 5] [--new-tokens 32] [--name NAME]

MODEL is a folder, a Hub repo id, or random-SmolLM2-1.7B (SmolLM2-1.7B's architecture with random weights, for
timings where reading the weights dominates decoding; default: the bundled SmolLM2-135M-Instruct). Each type is
quantized by the real CLI in its own process, whose peak RSS (the kernel's maximum resident set
size for that process) and wall time are recorded; the output is then loaded with stock
transformers here and timed: load time, next-token latency and generation throughput (batch 1,
fixed prompt, greedy, warm-up excluded, median of the repeats), eagerly and then with the forward compiled by
`torch.compile` and a static cache (`--no-compile`: eager only). Perplexity and top-1 agreement
come from the job's own verification. The source model in its own dtype is the baseline row.
Writes NAME.md, NAME.json and NAME.png (size vs perplexity delta) under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import torch

from quantizer import recipes
from quantizer.compute import describe_flags, describe_machine
from quantizer.demo import DEMO_NAME, prepare
from quantizer.hardware import Hardware, PeakGPU, detect
from quantizer.report import human_bytes
from quantizer.safetensors_io import weights_bytes

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "The three most important ideas in computer science are"


@dataclass
class Row:
    name: str  # "source" or a quant type
    bytes: int
    size_ratio: float
    quantize_seconds: float | None  # whole CLI job (quantize + save + verify), None for the source
    quantize_peak_rss_bytes: int | None
    load_seconds: float
    next_token_ms: float
    tokens_per_second: float
    ppl: float
    ppl_delta_pct: float
    top1_agreement: float
    speed_vs_source: float = 1.0
    compiled_tokens_per_second: float | None = None  # torch.compile and a static cache (None: not measured)
    compile_seconds: float | None = None  # the first compiled generate, compilation included
    compiled_error: str | None = None  # why the compiled mode failed, when it did
    quantize_peak_gpu_bytes: int | None = None  # CUDA memory the quantize job allocated at its peak
    serve_peak_gpu_bytes: int | None = None  # CUDA memory allocated at the peak of loading and generating


def run_job(source: Path, quant_type: str, out_dir: Path, extra: list[str]) -> tuple[dict, float, int]:
    """Quantize with the CLI in a child process; return its report, wall seconds and peak RSS."""
    argv = [
        sys.executable,
        "-m",
        "quantizer",
        str(source),
        "bench",
        "--quant-type",
        quant_type,
        "--save-only",
        "--output-dir",
        str(out_dir),
        "--overwrite",
        "--json",
        "--no-tracking",
        *extra,
    ]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{quant_type} failed:\n{err.read()[-3000:]}")
        return json.loads(out.read()), seconds, usage.ru_maxrss * 1024


@dataclass(frozen=True, kw_only=True)
class Timing:
    load_seconds: float
    next_token_ms: float
    tokens_per_second: float  # eager, dynamic cache
    peak_gpu_bytes: int | None
    compiled_tokens_per_second: float | None = None
    compile_seconds: float | None = None
    compiled_error: str | None = None


@dataclass(kw_only=True)
class Loaded:
    """A model loaded for timing, with the prompt and a timed greedy generation."""

    model: object
    ids: torch.Tensor
    pad: int
    hardware: Hardware
    new_tokens: int
    load_seconds: float

    def sync(self) -> None:
        if self.hardware.is_cuda:
            torch.cuda.synchronize()

    def generate(self) -> float:
        """Tokens per second of one greedy generation of `new_tokens`."""
        self.sync()
        started = time.perf_counter()
        self.model.generate(
            self.ids,
            attention_mask=torch.ones_like(self.ids),
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,
            do_sample=False,
            pad_token_id=self.pad,
        )
        self.sync()
        return self.new_tokens / (time.perf_counter() - started)

    def decode_step(self) -> float:
        """Seconds of one next-token forward after the prompt's."""
        out = self.model(self.ids, use_cache=True)
        next_id = out.logits[:, -1:].argmax(-1)
        self.sync()
        started = time.perf_counter()
        self.model(next_id, cache=out.cache, use_cache=True)
        self.sync()
        return time.perf_counter() - started


def load(folder: Path, hardware: Hardware, repeats: int, new_tokens: int) -> Loaded:
    """Stock `from_pretrained` (timed: the median of up to 3 loads), the tokenizer and the prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loads = []
    for _ in range(max(1, min(repeats, 3))):
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(folder, device_map=hardware.device).eval()
        loads.append(time.perf_counter() - started)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Loaded(
        model=model,
        ids=ids,
        pad=pad,
        hardware=hardware,
        new_tokens=new_tokens,
        load_seconds=statistics.median(loads),
    )


@torch.no_grad()
def time_eager(folder: Path, hardware: Hardware, repeats: int, new_tokens: int) -> Timing:
    """Load, next-token latency and generation throughput in eager mode (medians of `repeats` after one warm-up)."""
    peak_gpu = PeakGPU(hardware)
    if hardware.is_cuda:
        torch.cuda.empty_cache()
    peak_gpu.reset()
    loaded = load(folder, hardware, repeats, new_tokens)
    loaded.decode_step()
    loaded.generate()  # warm-up, excluded
    latency = statistics.median(loaded.decode_step() for _ in range(repeats)) * 1000
    throughput = statistics.median(loaded.generate() for _ in range(repeats))
    return Timing(
        load_seconds=loaded.load_seconds,
        next_token_ms=latency,
        tokens_per_second=throughput,
        peak_gpu_bytes=peak_gpu.peak_bytes(),
    )


@torch.no_grad()
def time_compiled(folder: Path, hardware: Hardware, repeats: int, new_tokens: int) -> tuple[float, float] | str:
    """Generation with the forward compiled by torch.compile and a static cache, the way the guide shows (on CUDA
    transformers compiles a static-cache generate itself): tokens/s (median of `repeats`) and the first generation's
    seconds, compilation included; or why it failed."""
    loaded = load(folder, hardware, 1, new_tokens)
    if not hardware.is_cuda:
        loaded.model.forward = torch.compile(loaded.model.forward)
    loaded.model.generation_config.cache_implementation = "static"
    try:
        started = time.perf_counter()
        loaded.generate()  # compiles the prefill and the decode step
        compile_seconds = time.perf_counter() - started
        return statistics.median(loaded.generate() for _ in range(repeats)), compile_seconds
    except Exception as exc:  # a type inductor cannot compile is a finding, recorded
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()
        return message[0][:300] if message else type(exc).__name__


def timed(folder: Path, hardware: Hardware, repeats: int, new_tokens: int, compiled: bool) -> Timing:
    """Eager figures, then (with `compiled`) compiled ones, each in a fresh process of its own: a crash in torch or
    torchao costs that measurement only, and no row starts with the previous one's compiled graphs."""
    eager = in_child(time_eager, folder, hardware, repeats, new_tokens)
    if not compiled:
        return eager
    try:
        fast = in_child(time_compiled, folder, hardware, repeats, new_tokens)
    except RuntimeError as exc:
        return replace(eager, compiled_error=f"compiling: {exc}")
    if isinstance(fast, str):
        return replace(eager, compiled_error=fast)
    return replace(eager, compiled_tokens_per_second=fast[0], compile_seconds=fast[1])


def in_child(measure: Callable, *args):
    """`measure(*args)` in a fresh process; a crash there (a segmentation fault) raises RuntimeError here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(measure, *args).result()
        except BrokenProcessPool:
            raise RuntimeError("the process timing it died (a crash in torch or torchao)") from None


RANDOM_LARGE = "random-SmolLM2-1.7B"  # MODEL value: SmolLM2-1.7B's architecture, random weights, for speed only
RANDOM_LARGE_CONFIG = {  # HuggingFaceTB/SmolLM2-1.7B-Instruct's config.json (a Llama)
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 8192,
    "rope_theta": 130000,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def random_large(workdir: Path) -> Path:
    """A model large enough that reading its weights dominates decoding (3.4 GB in bf16), with random weights:
    its timings are real, its perplexity and agreement mean nothing."""
    from transformers import LlamaConfig

    from benchmarks.tiny_models import save_random

    return save_random(LlamaConfig(**RANDOM_LARGE_CONFIG), workdir / RANDOM_LARGE, prepare(), seed=0)


def resolve_model(model: str | None, workdir: Path) -> tuple[Path, str]:
    if not model:
        return prepare(), DEMO_NAME
    if model == RANDOM_LARGE:
        return random_large(workdir), RANDOM_LARGE
    path = Path(model).expanduser()
    if path.is_dir():
        return path, path.resolve().name
    from quantizer.events import EventStream
    from quantizer.hub import Hub
    from quantizer.source import open_source

    source = open_source(model, Hub(os.environ.get("HF_TOKEN")))
    info = source.inspect()
    return source.fetch(workdir, EventStream()), info.name


def bench(
    model: str | None,
    types: list[str] | None,
    repeats: int,
    new_tokens: int,
    device: str,
    extra: list[str],
    compiled: bool = True,
    on_row: Callable[[list[Row], dict], None] = lambda rows, meta: None,
) -> tuple[list[Row], dict]:
    """Quantize every type, then time the source and each output; `on_row` sees the table after every row, so
    a run cut short (a lent GPU's time running out) still leaves what it measured."""
    hardware = detect(device)
    chosen = types or recipes.made_and_run_on(hardware)  # each output is timed here
    if model == RANDOM_LARGE:  # random weights fail the quality floors by near ties; their timings are still real
        extra = [*extra, "--speed-only"]
    with tempfile.TemporaryDirectory(prefix="quantizer-bench-") as tmp:
        work = Path(tmp)
        source, model_name = resolve_model(model, work)
        source_bytes = weights_bytes(source)
        jobs, failed = {}, {}
        for quant_type in chosen:
            print(f"quantizing {quant_type} ...", file=sys.stderr, flush=True)
            try:
                jobs[quant_type] = run_job(source, quant_type, work / quant_type, ["--device", hardware.device, *extra])
            except RuntimeError as exc:  # one type's failure is reported, the others are still measured
                print(exc, file=sys.stderr, flush=True)
                failed[quant_type] = str(exc)[-600:]
        if not jobs:
            raise SystemExit(f"every type failed: {', '.join(failed)}")
        first = next(iter(jobs.values()))[0]
        meta = {
            "model": model or f"bundled {DEMO_NAME}",
            "model_name": model_name,
            "hardware": hardware.name,
            "device": hardware.device,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "machine": describe_machine(),
            "repeats": repeats,
            "new_tokens": new_tokens,
            "prompt": PROMPT,
            "eval_tokens": first["results"][0]["verify"]["eval_tokens"],
            "int4_method": first_int4_method(jobs),
            "threads": torch.get_num_threads(),
            "versions": {name: version(name) for name in ("torch", "torchao", "transformers")},
            "gpu_driver": gpu_driver() if hardware.is_cuda else None,
            "failed": failed,
        }
        print("timing the source ...", file=sys.stderr, flush=True)
        timing = timed(source, hardware, repeats, new_tokens, compiled)
        rows = [
            Row(
                "source",
                source_bytes,
                1.0,
                None,
                None,
                timing.load_seconds,
                timing.next_token_ms,
                timing.tokens_per_second,
                first["ppl_source"],
                0.0,
                1.0,
                serve_peak_gpu_bytes=timing.peak_gpu_bytes,
                **compiled_columns(timing),
            )
        ]
        on_row(rows, meta)
        for quant_type, (report, seconds, peak) in jobs.items():
            result = report["results"][0]
            print(f"timing {quant_type} ...", file=sys.stderr, flush=True)
            try:
                timing = timed(Path(result["output_dir"]), hardware, repeats, new_tokens, compiled)
            except RuntimeError as exc:  # recorded as the type's failure; the other rows are still measured
                print(f"{quant_type}: {exc}", file=sys.stderr, flush=True)
                meta["failed"][quant_type] = f"timing failed: {exc}"
                on_row(rows, meta)
                continue
            v = result["verify"]
            rows.append(
                Row(
                    quant_type,
                    result["output_bytes"],
                    result["size_ratio"],
                    seconds,
                    peak,
                    timing.load_seconds,
                    timing.next_token_ms,
                    timing.tokens_per_second,
                    v["ppl_quantized"],
                    v["ppl_delta_pct"],
                    v["top1_agreement"],
                    timing.tokens_per_second / rows[0].tokens_per_second,
                    quantize_peak_gpu_bytes=result.get("peak_gpu_bytes"),
                    serve_peak_gpu_bytes=timing.peak_gpu_bytes,
                    **compiled_columns(timing),
                )
            )
            on_row(rows, meta)
    return rows, meta


def compiled_columns(timing: Timing) -> dict:
    return {
        "compiled_tokens_per_second": timing.compiled_tokens_per_second,
        "compile_seconds": timing.compile_seconds,
        "compiled_error": timing.compiled_error,
    }


def gpu_driver() -> str | None:
    """The NVIDIA driver version, as nvidia-smi reports it (None where it cannot be read)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def first_int4_method(jobs: dict) -> str | None:
    return next((r["results"][0]["int4_method"] for r, _, _ in jobs.values() if r["results"][0]["int4_method"]), None)


def markdown(rows: list[Row], meta: dict) -> str:
    on_gpu = meta["device"] == "cuda"
    columns = [
        "type",
        "weights",
        "ratio",
        "quantize job (s)",
        "peak RSS quantizing",
        *(["peak GPU quantizing", "peak GPU serving"] if on_gpu else []),
        "load (s)",
        "next token (ms)",
        "tokens/s",
        "vs source",
        "perplexity",
        "Δ ppl",
        "top-1",
    ]
    versions = meta.get("versions") or {}
    where = (
        f"{meta['hardware']} (driver {meta.get('gpu_driver') or 'unknown'}, torch {meta['torch']}, torchao "
        f"{versions.get('torchao', '?')}, transformers {versions.get('transformers', '?')})"
        if on_gpu
        else f"{meta['hardware']} ({meta['device']}, torch {meta['torch']}, {meta['threads']} threads)"
    )
    lines = [
        f"{meta['model_name']} on {where}; batch 1, {meta['new_tokens']} new tokens, median of {meta['repeats']}; "
        + (
            "random weights: timings only, its perplexity and top-1 mean nothing"
            if meta["model_name"] == RANDOM_LARGE
            else f"perplexity on {meta['eval_tokens']} tokens of Python's pydoc topics"
        )
        + (f"; int4 method {meta['int4_method']}" if meta.get("int4_method") else "")
        + "."
        + (f" Measured on {describe_flags(meta['machine'])}." if meta.get("machine") else ""),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    compiled = any(r.compiled_tokens_per_second or r.compiled_error for r in rows)
    if compiled:
        columns[columns.index("vs source") + 1 : columns.index("vs source") + 1] = [
            "tokens/s compiled",
            "compiled vs source compiled",
            "compile (s)",
        ]
        lines[2] = "| " + " | ".join(columns) + " |"
        lines[3] = "|" + "|".join("---" for _ in columns) + "|"
    base = rows[0].compiled_tokens_per_second if rows else None
    for r in rows:
        fast = (
            f"{r.compiled_tokens_per_second:.1f} | "
            f"{f'{r.compiled_tokens_per_second / base:.2f}x' if base else '-'} | {r.compile_seconds:.0f} | "
            if r.compiled_tokens_per_second
            else "failed | - | - | "
            if r.compiled_error
            else "- | - | - | "
        )
        gpu = (
            f"{'-' if r.quantize_peak_gpu_bytes is None else human_bytes(r.quantize_peak_gpu_bytes)} | "
            f"{'-' if r.serve_peak_gpu_bytes is None else human_bytes(r.serve_peak_gpu_bytes)} | "
            if on_gpu
            else ""
        )
        lines.append(
            f"| {r.name} | {human_bytes(r.bytes)} | {r.size_ratio:.1%} | "
            f"{'-' if r.quantize_seconds is None else f'{r.quantize_seconds:.1f}'} | "
            f"{'-' if r.quantize_peak_rss_bytes is None else human_bytes(r.quantize_peak_rss_bytes)} | {gpu}"
            f"{r.load_seconds:.2f} | {r.next_token_ms:.1f} | {r.tokens_per_second:.1f} | {r.speed_vs_source:.2f}x | "
            f"{fast if compiled else ''}"
            f"{r.ppl:.3f} | {r.ppl_delta_pct:+.2f}% | {r.top1_agreement:.1%} |"
        )
    for r in rows:
        if r.compiled_error:
            lines.append(f"\n{r.name} compiled failed: {r.compiled_error}")
    for quant_type, error in (meta.get("failed") or {}).items():
        lines.append(f"\n{quant_type} failed: {error.strip().splitlines()[-1] if error.strip() else 'no message'}")
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        ax.scatter(r.bytes / 1e6, r.ppl_delta_pct, s=60)
        ax.annotate(r.name, (r.bytes / 1e6, r.ppl_delta_pct), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("weights on disk (MB)")
    ax.set_ylabel("perplexity change vs source (%)")
    ax.set_title(f"{meta['model_name']} on {meta['hardware']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="folder or repo id (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--types", nargs="+", default=None, help="quant types (default: all this hardware runs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-compile", action="store_true", help="eager timings only")
    parser.add_argument("--name", default=None, help="results file name (default: DEVICE-MODEL)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args, extra = parser.parse_known_args(argv)
    from quantizer.console import quiet_libraries

    quiet_libraries()
    args.output.mkdir(parents=True, exist_ok=True)

    def write(rows: list[Row], meta: dict) -> None:
        name = args.name or f"{meta['device']}-{meta['model_name']}"
        (args.output / f"{name}.md").write_text(markdown(rows, meta))
        data = {"meta": meta, "rows": [asdict(r) for r in rows]}
        (args.output / f"{name}.json").write_text(json.dumps(data, indent=2))

    rows, meta = bench(
        args.model,
        args.types,
        args.repeats,
        args.new_tokens,
        args.device,
        extra,
        compiled=not args.no_compile,
        on_row=write,
    )
    bad = [r.name for r in rows for v in asdict(r).values() if isinstance(v, float) and not math.isfinite(v)]
    name = args.name or f"{meta['device']}-{meta['model_name']}"
    text = markdown(rows, meta)
    chart(rows, meta, args.output / f"{name}.png")
    print(text)
    print(f"written: {args.output / name}.{{md,json,png}}", file=sys.stderr)
    if bad:
        print(f"non-finite figures in: {sorted(set(bad))}", file=sys.stderr)
    return 1 if bad or meta["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
