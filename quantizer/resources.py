"""Will the job fit? Disk and memory estimated from the source's file sizes, checked before any download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SourceError
from .hardware import available_memory_bytes, free_disk_bytes

# An output is at most about this share of the source's bf16 bytes for every type we write
# (int8 and unpacked int4 measure 55-62% on small models whose embeddings stay bf16).
OUTPUT_SHARE = 0.65
# the whole-model engine's output shards (the Hub's usual size); aligning one (`safetensors_io.align_file`) writes a
# copy of it beside it, so the staged output needs one shard more while it is saved
SAVE_SHARD_BYTES = 5 * 10**9
# Loading the source for the reference pass holds its weights once, plus the framework's own memory.
MEMORY_FACTOR = 1.25
RUNTIME_BYTES = 600 * 1024**2


@dataclass(frozen=True)
class Need:
    where: str  # what the bytes are for
    path: Path | None  # a folder on the disk that must hold them; None for memory
    bytes: int


def memory_for_whole_model(weight_bytes: int, upcast: float = 1.0) -> int:
    """What loading the source as a whole (the standard path and the reference pass) takes; `upcast` is how many
    times its bytes it takes once upcast for computing (`compute.upcast_factor`: 2 for bf16 run in float32)."""
    return int(weight_bytes * upcast * MEMORY_FACTOR) + RUNTIME_BYTES


def streaming_memory(largest_shard: int) -> int:
    """What the streaming engine holds: about two source shards' tensors, plus the framework."""
    return 2 * largest_shard + RUNTIME_BYTES


def layerwise_memory(largest_shard: int, config: dict, tokens: int) -> int:
    """What the layer-by-layer check adds to streaming: the source shard and the output shard it reads (the
    output at most OUTPUT_SHARE of the source), the embedding and head (bf16, once when tied), and the hidden
    states and per-window logits of both models (float32, with room for the layer's temporaries)."""
    hidden, vocab = int(config.get("hidden_size") or 0), int(config.get("vocab_size") or 0)
    outer = vocab * hidden * 2 * (1 if config.get("tie_word_embeddings", True) else 2)
    activations = 8 * tokens * hidden * 4 + 4 * 64 * vocab * 4  # logits: 64 positions of both models at a time
    return int(largest_shard * (1 + OUTPUT_SHARE)) + outer + activations


def fits_in_memory(weight_bytes: int, upcast: float = 1.0) -> bool:
    return memory_for_whole_model(weight_bytes, upcast) <= available_memory_bytes()


def estimate(
    weight_bytes: int,
    n_outputs: int,
    download: bool,
    keep_outputs: bool,
    workdir: Path,
    output_dir: Path | None,
    streaming_shard: int | None = None,
    upload_as_it_goes: bool = False,
    layerwise_bytes: int = 0,
    upcast: float = 1.0,
) -> list[Need]:
    """The disk and memory a job needs, by place. With `streaming_shard` (the largest source shard's bytes)
    memory holds about one shard's tensors at a time and the download one shard; with `upload_as_it_goes`
    each output shard leaves the disk once uploaded, so the staged output is bounded by two shards too;
    `layerwise_bytes` is the layer-by-layer check's memory when the job runs it; `upcast` as for
    `memory_for_whole_model` (the streaming engine upcasts one layer at a time, which the allowances hold)."""
    output = int(weight_bytes * OUTPUT_SHARE)
    if streaming_shard is None:
        needs = [Need("memory", None, memory_for_whole_model(weight_bytes, upcast))]
        download_bytes = weight_bytes
        output += min(output, SAVE_SHARD_BYTES)
    else:
        needs = [Need("memory", None, streaming_memory(streaming_shard) + layerwise_bytes)]
        download_bytes = streaming_shard
        if upload_as_it_goes:
            output = 2 * int(streaming_shard * OUTPUT_SHARE)
    work = (download_bytes if download else 0) + (0 if keep_outputs else output)
    if work:
        needs.append(Need("the download and staged output", workdir, work))
    if keep_outputs and output_dir is not None:
        needs.append(Need(f"{n_outputs} output(s)", output_dir, output * n_outputs))
    return needs


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def describe(needs: list[Need]) -> str:
    """What preflight checked, with the numbers: each need against what this machine has."""
    parts = []
    for need in needs:
        if need.path is None:
            parts.append(f"{gb(need.bytes)} of memory ({gb(available_memory_bytes())} available)")
        else:
            parts.append(f"{gb(need.bytes)} of disk for {need.where} ({gb(free_disk_bytes(need.path))} free)")
    return "this job needs about " + ", and ".join(parts)


def check(needs: list[Need]) -> None:
    """Raise with the numbers when a need exceeds what is free."""
    problems = []
    for need in needs:
        if need.path is None:
            free = available_memory_bytes()
            if need.bytes > free:
                problems.append(f"about {gb(need.bytes)} of memory but {gb(free)} is available")
        else:
            free = free_disk_bytes(need.path)
            if need.bytes > free:
                problems.append(
                    f"about {gb(need.bytes)} of disk in {need.path} for {need.where} but {gb(free)} is free"
                )
    if problems:
        raise SourceError(
            "the job does not fit this machine: it needs "
            + "; and ".join(problems)
            + ". Free some space, or run on a machine with more memory and disk."
        )
