"""Quantize a model larger than memory: shard by shard, tensor by tensor, with bounded memory.

Each safetensors shard of the source is opened memory-mapped and read one tensor at a time.
Every Linear weight that TorchAoConfig would quantize goes through the same torchao config on a
throwaway `nn.Linear` (the same `quantize_` call transformers makes while loading, so the bytes
are identical), is flattened with torchao's safetensors support, and written to an output shard
as soon as its source shard is done. Everything else passes through unchanged; tied weights stay
tied (the source stores them once, and config.json keeps tie_word_embeddings).

Tensors are read and written one at a time (quantizer.safetensors_io), without memory maps, and
tensors that pass through are copied in chunks, so memory holds about one Linear weight at a
time. transformers merges the torchao metadata of all shards in file order, the last file's
`tensor_names` winning, so each shard's header holds the metadata of every tensor written so far
and the last one names them all. A finished shard is therefore final: the caller may upload and
delete it (`written`) while the next one is quantized.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchao.core.config import AOBaseConfig
from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
from transformers import TorchAoConfig

from .compute import compute_dtype, for_compute
from .events import EventStream
from .experts import ExpertMerger, covering, model_names, planned_expert_weights, quantize_expert, write_forward
from .int4.packed import cpu_runnable
from .layers import LayerCount, planned_linear_layers, planned_skipped_linears, quantize_weight
from .safetensors_io import ShardReader, ShardWriter

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class ShardPlan:
    """The source's weight shards, in order, and which tensor lives where."""

    shards: list[str]
    weight_map: dict[str, str]

    @classmethod
    def of(cls, source_dir: Path) -> ShardPlan:
        """The plan of a source folder (its weight files, or its index when it has one)."""
        files = [p.name for p in source_dir.iterdir()] if source_dir.exists() else []
        index = json.loads((source_dir / INDEX_NAME).read_text()) if (source_dir / INDEX_NAME).is_file() else None
        return cls.read(files, index)

    @classmethod
    def read(cls, files: list[str], index: dict | None) -> ShardPlan:
        if index:
            weight_map = index["weight_map"]
            shards = sorted(set(weight_map.values()))
            # preflight refused any name that is not one of the source's files; never open a path that leaves the folder
            strangers = [s for s in shards if not isinstance(s, str) or Path(s).name != s or s in (".", "..")]
            if strangers:
                raise ValueError(f"the shard index names files outside the model folder: {strangers[:3]}")
            return cls(shards, weight_map)
        shards = sorted(f for f in files if f.endswith(".safetensors"))
        if len(shards) != 1:
            raise ValueError(f"expected one safetensors file or an index, found {shards}")
        return cls(shards, {})


def reserve_for(shard_tensors: int, n_tensors: int, n_quantized: int) -> int:
    """Header room: this shard's tensor entries plus the whole model's merged metadata (generous per-tensor
    allowances; measured metadata entries are 0.3-0.7 KB, tensor entries about 0.1 KB, flattening makes up to
    four tensors of one)."""
    return 4096 + shard_tensors * 4 * 200 + n_tensors * 200 + n_quantized * 1536


@dataclass(kw_only=True)
class Streamed:
    """What streaming wrote: Linear layer counts and, for a sample of layers, their output error."""

    counts: LayerCount
    layer_errors: dict[str, float]  # weight name -> relative error of the layer's output on random inputs
    output_bytes: int  # of the weight shards written (some may have been uploaded and deleted since)


def layer_output_error(weight: torch.Tensor, quantized: torch.Tensor, seed: int = 0) -> float:
    """Relative L2 error of y = x W^T against the quantized layer, on a fixed batch of random inputs."""
    generator = torch.Generator().manual_seed(seed)
    compute = compute_dtype(weight.dtype, "cpu")
    x = torch.randn(16, weight.shape[1], generator=generator).to(weight.dtype)  # inputs the source's dtype can hold
    with torch.no_grad():
        reference = torch.nn.functional.linear(x.float(), weight.float())
        got = torch.nn.functional.linear(x.to(compute), for_compute(cpu_runnable(quantized), compute)).float()
    return ((got - reference).norm() / reference.norm()).item()


def sample_keys(keys: list[str], count: int) -> set[str]:
    """`count` keys spread evenly over the model (first, last and between)."""
    if count <= 0:
        return set()
    if count == 1:
        return {keys[0]} if keys else set()
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
    quantize: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    shard_path: Callable[[str], Path] | None = None,
    release: Callable[[str], None] | None = None,
    written: Callable[[Path, Path], None] | None = None,
    check_layers: int = 8,
    experts_forward: str | None = None,
    quantize_experts: bool = False,
) -> Streamed:
    """Write the quantized checkpoint to `output_dir` shard by shard.

    `quantize(name, weight)` makes one quantized weight (default: `torchao_config` through quantize_); `name` is the
    model's parameter name, for a choice made per layer (mixed precision).
    `shard_path(name)` gives the local file of a source shard (a Hub source downloads it then);
    `written(source_file, output_file)` is called once an output shard is final, before its source
    shard is released (the caller may check it, upload it and delete it);
    `release(name)` is called once its output is written (a Hub source deletes it). The output
    error of `check_layers` Linear layers spread over the model is measured on the way. With
    `quantize_experts`, a mixture of experts' per-expert tensors are merged into their 3-D weights
    (`experts.ExpertMerger`) and quantized with `torchao_config` as the whole-model path does;
    `experts_forward` goes to config.json.
    """
    shard_path = shard_path or (lambda name: source_dir / name)
    plan = ShardPlan.of(source_dir)
    streamer = ShardStreamer(
        config_dict=config_dict,
        torchao_config=torchao_config,
        quantize=quantize or (lambda name, weight: quantize_weight(weight, torchao_config)),
        events=events,
        n_tensors=len(plan.weight_map),
        check_layers=check_layers,
        quantize_experts=quantize_experts,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    n = len(plan.shards)
    for i, shard in enumerate(plan.shards):
        out_name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        streamer.write_shard(shard_path(shard), output_dir / out_name)
        if written:
            written(shard_path(shard), output_dir / out_name)
        if release:
            release(shard)
        events.progress("stream", i + 1, n, quant_type=quant_type)
    return streamer.finish(source_dir, output_dir, multiple_shards=n > 1, experts_forward=experts_forward)


class ShardStreamer:
    """The state of one streamed output: what was written where, with the metadata transformers reads back."""

    def __init__(
        self,
        *,
        config_dict: dict,
        torchao_config: AOBaseConfig,
        quantize: Callable[[str, torch.Tensor], torch.Tensor],
        events: EventStream,
        n_tensors: int,
        check_layers: int,
        quantize_experts: bool,
    ) -> None:
        self.config_dict, self.torchao_config, self.quantize, self.events = (
            config_dict,
            torchao_config,
            quantize,
            events,
        )
        ordered = [f"{layer.name}.weight" for layer in planned_linear_layers(config_dict)]
        self.quantizable = set(ordered)
        self.checked = sample_keys(ordered, check_layers)
        self.expert_shapes = planned_expert_weights(config_dict) if quantize_experts else {}
        self.model_name = model_names(config_dict["model_type"])
        first_shape = next(iter(self.expert_shapes.values()))[0] if self.expert_shapes else None
        self.merger = ExpertMerger(config_dict["model_type"], first_shape) if self.expert_shapes else None
        self.n_tensors = n_tensors or len(self.quantizable) * 2
        self.layer_errors: dict[str, float] = {}
        self.names: list[str] = []
        self.metadata: dict[str, str] = {}
        self.weight_map: dict[str, str] = {}
        self.total_size = self.output_bytes = self.quantized = 0

    def write_shard(self, source_file: Path, output_file: Path) -> None:
        """One source shard into one output shard, a tensor at a time."""
        reader = ShardReader(source_file)
        n_quantized = len(self.quantizable) + len(self.expert_shapes)
        writer = ShardWriter(output_file, reserve_for(len(reader.entries), self.n_tensors, n_quantized))
        for key in reader.in_file_order():
            self.events.checkpoint()  # a stopped job ends here, between tensors
            self.write_tensor(reader, writer, key, output_file.name)
        writer.close({**self.metadata, "tensor_names": json.dumps(self.names), "format": "pt"})
        reader.close()
        self.output_bytes += output_file.stat().st_size

    def write_tensor(self, reader: ShardReader, writer: ShardWriter, key: str, out_name: str) -> None:
        piece = self.merger.match(key) if self.merger else None
        if piece is not None:  # one expert's 2-D tensor: kept until its layer's 3-D weight is whole
            rule, name, index, expert = piece
            merged = self.merger.add(rule, name, index, expert, reader.read(key))
            reader.release(key)
            if merged is not None:
                tensor = quantize_expert(merged, name.rsplit(".", 1)[1], self.torchao_config)
                del merged
                self.add_quantized(writer, name, tensor, out_name)
            return
        param = self.model_name(key)
        if param not in self.quantizable:  # passes through byte for byte, in chunks
            self.names.append(param)
            reader.copy_to(key, writer)
            self.metadata[param] = json.dumps({"_type": torch.Tensor.__name__})
            self.weight_map[key] = out_name
            self.total_size += reader.nbytes(key)
            return
        weight = reader.read(key)
        tensor = self.quantize(param, weight)
        if param in self.checked:
            self.layer_errors[key] = layer_output_error(weight, tensor)
        del weight
        reader.release(key)
        self.add_quantized(writer, key, tensor, out_name)

    def add_quantized(self, writer: ShardWriter, key: str, tensor: torch.Tensor, out_name: str) -> None:
        self.quantized += 1
        self.names.append(self.model_name(key))
        self.total_size += write_quantized(
            writer, key, tensor, self.metadata, self.weight_map, out_name, self.model_name
        )

    def finish(self, source_dir: Path, output_dir: Path, *, multiple_shards: bool, experts_forward: str | None):
        """The index, config.json and generation config; checks that every planned weight was written."""
        if multiple_shards:
            index_out = {
                "metadata": {"total_size": self.total_size},
                "weight_map": dict(sorted(self.weight_map.items())),
            }
            (output_dir / INDEX_NAME).write_text(json.dumps(index_out, indent=2, sort_keys=True) + "\n")
        merger, config_dict = self.merger, self.config_dict
        if merger:
            merger.check_done()
            if merger.merged != len(self.expert_shapes):
                raise ValueError(
                    f"merged {merger.merged} expert weights of the {len(self.expert_shapes)} the model has"
                )
        write_config(
            output_dir, config_dict, covering(self.torchao_config, config_dict) if merger else self.torchao_config
        )
        write_forward(output_dir, experts_forward if merger else None)
        if (source_dir / "generation_config.json").is_file():  # save_pretrained writes it on the standard path
            shutil.copy2(source_dir / "generation_config.json", output_dir / "generation_config.json")
        missing = self.quantizable - set(self.names)
        if missing:
            raise ValueError(f"the source has no tensor for {sorted(missing)[:3]}")
        return Streamed(
            counts=LayerCount(quantized=self.quantized, skipped=planned_skipped_linears(config_dict)),
            layer_errors=self.layer_errors,
            output_bytes=self.output_bytes,
        )


def write_quantized(
    writer: ShardWriter,
    key: str,
    tensor: torch.Tensor,
    metadata: dict[str, str],
    weight_map: dict[str, str],
    out_name: str,
    model_name: Callable[[str], str],
) -> int:
    """Flatten one torchao tensor with torchao's safetensors support into the shard (under the checkpoint's
    name; its metadata under the model's, as save_pretrained writes them); returns the bytes written."""
    flat, meta = flatten_tensor_state_dict({key: tensor})
    meta.pop("tensor_names")
    metadata.update({model_name(k): v for k, v in meta.items()})
    size = 0
    for flat_key, value in flat.items():
        size += writer.add(flat_key, value)
        weight_map[flat_key] = out_name
    return size


def write_config(output_dir: Path, config_dict: dict, torchao_config: AOBaseConfig) -> None:
    """config.json as the source's, with the quantization_config TorchAoConfig writes."""
    config = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config["quantization_config"] = TorchAoConfig(quant_type=torchao_config).to_dict()
    (output_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
