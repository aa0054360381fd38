"""Quantize a model larger than memory: shard by shard, tensor by tensor, with bounded memory.

Each safetensors shard of the source is opened memory-mapped and read one tensor at a time.
Every Linear weight that TorchAoConfig would quantize goes through the same torchao config on a
throwaway `nn.Linear` (the same `quantize_` call transformers makes while loading, so the bytes
are identical), is flattened with torchao's safetensors support, and written to an output shard
as soon as its source shard is done. Everything else passes through unchanged; tied weights stay
tied (the source stores them once, and config.json keeps tie_word_embeddings).

torchao's loader needs the merged metadata of all tensors in every shard, which is only known
at the end. Each shard is therefore written with room reserved in its header, and the headers
are rewritten in place once every shard exists (safetensors allows a header padded with spaces).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torchao.core.config import AOBaseConfig
from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
from torchao.quantization import quantize_
from transformers import TorchAoConfig

from .engine import LayerCount, planned_linear_layers
from .events import EventStream

RESERVE_KEY = "__quantizer_reserved__"
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class ShardPlan:
    """The source's weight shards, in order, and which tensor lives where."""

    shards: list[str]
    weight_map: dict[str, str]

    @classmethod
    def read(cls, files: list[str], index: dict | None) -> ShardPlan:
        if index:
            weight_map = index["weight_map"]
            return cls(sorted(set(weight_map.values())), weight_map)
        shards = sorted(f for f in files if f.endswith(".safetensors"))
        if len(shards) != 1:
            raise ValueError(f"expected one safetensors file or an index, found {shards}")
        return cls(shards, {})


def quantize_weight(weight: torch.Tensor, config: AOBaseConfig) -> torch.Tensor:
    """The same quantize_ call transformers makes while loading, on a throwaway Linear that owns nothing else."""
    with torch.device("meta"):
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    quantize_(linear, config)
    return linear.weight.data if isinstance(linear.weight, torch.nn.Parameter) else linear.weight


def reserve_for(n_tensors: int, n_quantized: int) -> int:
    """Header room for the merged metadata: generous per-tensor allowances, measured entries are 0.3-0.7 KB."""
    return 4096 + n_tensors * 160 + n_quantized * 1536


def rewrite_header(path: Path, metadata: dict[str, str]) -> None:
    """Replace a safetensors file's __metadata__ in place, keeping the header length (padding with spaces)."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header["__metadata__"] = metadata
        encoded = json.dumps(header, separators=(",", ":")).encode()
        if len(encoded) > length:
            raise ValueError(f"{path.name}: merged metadata ({len(encoded)} bytes) exceeds the reserved {length}")
        f.seek(8)
        f.write(encoded + b" " * (length - len(encoded)))


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            yield key, f.get_tensor(key)


@dataclass
class Streamed:
    """What streaming wrote: Linear layer counts and, for a sample of layers, their output error."""

    counts: LayerCount
    layer_errors: dict[str, float]  # weight name -> relative error of the layer's output on random inputs


def layer_output_error(weight: torch.Tensor, quantized: torch.Tensor, seed: int = 0) -> float:
    """Relative L2 error of y = x W^T against the quantized layer, on a fixed batch of random inputs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, weight.shape[1], generator=generator).to(weight.dtype)
    with torch.no_grad():
        reference = torch.nn.functional.linear(x.float(), weight.float())
        got = torch.nn.functional.linear(x, quantized).float()
    return ((got - reference).norm() / reference.norm()).item()


def sample_keys(keys: list[str], count: int) -> set[str]:
    """`count` keys spread evenly over the model (first, last and between)."""
    if len(keys) <= count:
        return set(keys)
    step = (len(keys) - 1) / (count - 1)
    return {keys[round(i * step)] for i in range(count)}


def stream_quantize(
    source_dir: Path,
    output_dir: Path,
    config_dict: dict,
    torchao_config: AOBaseConfig,
    events: EventStream,
    quant_type: str,
    quantize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shard_path: Callable[[str], Path] | None = None,
    release: Callable[[str], None] | None = None,
    check_layers: int = 8,
) -> Streamed:
    """Write the quantized checkpoint to `output_dir` shard by shard.

    `quantize(weight)` makes one quantized weight (default: `torchao_config` through quantize_).
    `shard_path(name)` gives the local file of a source shard (a Hub source downloads it then);
    `release(name)` is called once its output is written (a Hub source deletes it). The output
    error of `check_layers` Linear layers spread over the model is measured on the way.
    """
    quantize = quantize or (lambda weight: quantize_weight(weight, torchao_config))
    shard_path = shard_path or (lambda name: source_dir / name)
    files = [p.name for p in source_dir.iterdir()] if source_dir.exists() else []
    index = json.loads((source_dir / INDEX_NAME).read_text()) if (source_dir / INDEX_NAME).is_file() else None
    plan = ShardPlan.read(files, index)
    ordered = [f"{layer.name}.weight" for layer in planned_linear_layers(config_dict)]
    quantizable = set(ordered)
    checked = sample_keys(ordered, check_layers)
    layer_errors: dict[str, float] = {}
    n_tensors = len(plan.weight_map) or len(quantizable) * 2
    reserve = reserve_for(n_tensors, len(quantizable))
    output_dir.mkdir(parents=True, exist_ok=True)
    n = len(plan.shards)
    names: list[str] = []
    metadata: dict[str, str] = {}
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    total_size = 0
    quantized = 0
    for i, shard in enumerate(plan.shards):
        out_name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for key, tensor in iter_tensors(shard_path(shard)):
            if key in quantizable:
                source_weight, tensor = tensor, quantize(tensor)
                if key in checked:
                    layer_errors[key] = layer_output_error(source_weight, tensor)
                del source_weight
                quantized += 1
            flat, meta = flatten_tensor_state_dict({key: tensor})
            meta.pop("tensor_names")
            metadata.update(meta)
            names.append(key)
            for flat_key, value in flat.items():
                tensors[flat_key] = value.contiguous()
                weight_map[flat_key] = out_name
                total_size += value.numel() * value.element_size()
        path = output_dir / out_name
        save_file(tensors, str(path), metadata={"format": "pt", RESERVE_KEY: " " * reserve})
        written.append(path)
        del tensors
        if release:
            release(shard)
        events.progress("stream", i + 1, n, quant_type=quant_type)
    merged = {**metadata, "tensor_names": json.dumps(names), "format": "pt"}
    for path in written:
        rewrite_header(path, merged)
    if n > 1:
        index_out = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (output_dir / INDEX_NAME).write_text(json.dumps(index_out, indent=2, sort_keys=True) + "\n")
    write_config(output_dir, config_dict, torchao_config)
    missing = quantizable - set(names)
    if missing:
        raise ValueError(f"the source has no tensor for {sorted(missing)[:3]}")
    return Streamed(LayerCount(quantized, skipped_linear_names(config_dict, quantizable)), layer_errors)


def write_config(output_dir: Path, config_dict: dict, torchao_config: AOBaseConfig) -> None:
    """config.json as the source's, with the quantization_config TorchAoConfig writes."""
    config = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config["quantization_config"] = TorchAoConfig(quant_type=torchao_config).to_dict()
    (output_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def skipped_linear_names(config_dict: dict, quantizable: set[str]) -> tuple[str, ...]:
    """The Linear layers left as they are (the lm_head), named as count_linear_layers names them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict))
    return tuple(
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and f"{n}.weight" not in quantizable
    )


def output_shard_bytes(folder: Path) -> int:
    return sum(os.path.getsize(p) for p in folder.glob("*.safetensors"))
