"""Perplexity of a model that cannot be loaded, measured one decoder layer at a time while it is streamed.

The streaming engine hands over each source shard with the output shard made from it, while both are
still on disk (before the source shard is released and the output uploaded and deleted). The evaluator
reads from them the tensors it still needs: the embedding, final norm and head once, and the weights of
decoder layers not yet run. As soon as a decoder layer has all its weights, from the source and from the
output, the source's and the output's hidden states go through it and its weights are dropped. The inputs
of the first decoder layer (the embedded tokens, and the position embeddings and mask each layer is
called with) come from the model's own forward, stopped at that layer, so no architecture is re-implemented
here. At the end the final norm and the head give both models' perplexity and logits.

Memory: the embedding and head (held once when the output passed them through), one decoder layer of
each model, and the hidden states of the evaluation tokens. Time: each model's forward over the tokens
once; a large model runs fewer perplexity windows (`TOKEN_PARAMS_BUDGET`), at least one, and the
figures say how many tokens they were measured on.

A checkpoint whose shards put the embedding after the decoder layers would make the evaluator hold
every layer until the end; past `max_pending_bytes` it stops and says so, and the job keeps its other checks.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

from .compute import compute_dtype, for_compute, stored_dtype
from .int4.gptq import capture_layer_inputs, first
from .int4.packed import cpu_runnable
from .layers import decoder_layers, expert_weights, meta_model
from .texts import WINDOW, EvalData

# perplexity tokens x model parameters a layer-by-layer run may spend: all 2048 default tokens up to about
# 2B parameters, a single 256-token window from about 16B (a 70B model's forward over it is still minutes)
TOKEN_PARAMS_BUDGET = 4e12
LOGITS_CHUNK = 64  # positions whose vocabulary-wide logits are held at once


@dataclass(frozen=True, kw_only=True)
class LayerwiseFigures:
    """Both models' figures on the job's EvalData, as `verify.Figures` gives them for a loaded model."""

    ppl_source: float
    ppl_quantized: float
    logits_rel_err: float
    top1_agreement: float
    layers: int
    tokens: int  # perplexity tokens each model ran


class LayerwiseEvaluator:
    """Feed it (source shard, output shard) pairs in order with `feed`; `result()` once all are fed."""

    def __init__(self, config_dict: dict, data: EvalData, max_pending_bytes: int) -> None:
        self.skeleton = meta_model(config_dict)
        self.config = self.skeleton.config
        self.compute = compute_dtype(stored_dtype(config_dict), "cpu")  # one layer at a time, upcast where slower
        params = sum(p.numel() for p in self.skeleton.parameters())
        windows = max(1, min(len(data.windows), int(TOKEN_PARAMS_BUDGET // (params * WINDOW))))
        self.data = EvalData(data.windows[:windows], data.batch, data.prompt_ids)
        self.max_pending_bytes = max_pending_bytes
        prefix, self.decoder = decoder_layers(self.skeleton)
        self.layer_prefix = prefix + "."
        self.params = dict(self.skeleton.named_parameters(remove_duplicate=False))
        self.layer_names = [
            sorted(n for n in self.params if n.startswith(f"{self.layer_prefix}{i}.")) for i in range(len(self.decoder))
        ]
        self.outer_names = sorted(n for n in self.params if not n.startswith(self.layer_prefix))
        self.source: dict[str, torch.Tensor] = {}  # plain tensors read so far, by parameter name
        self.output: dict[str, torch.Tensor] = {}  # the output's, torchao tensors unflattened
        self.next_layer = 0
        self.hidden: dict[str, list[torch.Tensor]] | None = None  # "source"/"output" -> one tensor per input
        self.kwargs: list[dict] = []
        self.stopped: str | None = None  # why the evaluator gave up, if it did
        if prefix != "model.layers" or not hasattr(self.skeleton.model, "norm"):
            self.stopped = f"the layer-by-layer check runs models laid out as model.layers and model.norm, not {prefix}"
        elif expert_weights(self.skeleton):
            self.stopped = (
                "the layer-by-layer check does not read a mixture of experts' per-expert checkpoint tensors yet"
            )

    # --- reading shards ---------------------------------------------------------------------------------------
    def feed(self, source_file: Path, output_file: Path) -> None:
        if self.stopped:
            return
        self._read_source(source_file)
        self._read_output(output_file)
        self._advance()
        pending = sum(t.nbytes for n, t in self.source.items() if n.startswith(self.layer_prefix)) + sum(
            sum(p.nbytes for p in _plain_parts(t)) for n, t in self.output.items() if n.startswith(self.layer_prefix)
        )
        if pending > self.max_pending_bytes:
            self.stopped = (
                f"the layer-by-layer perplexity was stopped: the shards hold decoder layers before the embedding, "
                f"so it would have kept {pending / 1e9:.1f} GB of weights in memory"
            )
            self.source.clear()
            self.output.clear()

    def _wanted(self, name: str) -> bool:
        if not name.startswith(self.layer_prefix):
            return name in self.params
        index = int(name[len(self.layer_prefix) :].split(".", 1)[0])
        return index >= self.next_layer

    def _read_source(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - a safetensors file, not a dict
                if self._wanted(key):
                    self.source[key] = f.get_tensor(key)

    def _read_output(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            keys = f.keys()
            flat = {k: f.get_tensor(k) for k in keys if self._wanted(_param_of(k))}
        names = sorted({_param_of(k) for k in flat} & set(metadata))
        restricted = {**{n: metadata[n] for n in names}, "tensor_names": json.dumps(names)}
        tensors, leftover = unflatten_tensor_state_dict(flat, restricted)
        for name, tensor in {**tensors, **leftover}.items():  # leftover: plain tensors without metadata entries
            same = self.source.get(name)
            passed_through = same is not None and type(tensor) is torch.Tensor and torch.equal(tensor, same)
            self.output[name] = same if passed_through else tensor  # one copy of what was passed through

    # --- running ----------------------------------------------------------------------------------------------
    def _outer(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The skeleton with its embedding, norm and head set to `weights` (decoder layers stay on meta)."""
        model = self.skeleton
        for name in self.outer_names:
            tensor = weights.get(name)
            if tensor is None and name in self.source:
                tensor = self.source[name]
            if tensor is not None:
                assign_parameter(model, name, for_compute(cpu_runnable(tensor), self.compute))
        if self.config.tie_word_embeddings:
            model.tie_weights()
        rebuild_rotary(model)
        return model

    def _outer_ready(self, weights: dict[str, torch.Tensor]) -> bool:
        embed = self.skeleton.get_input_embeddings()
        name = next(n for n, p in self.params.items() if p is embed.weight)
        return name in weights or name in self.source

    def _capture(self) -> None:
        model = self._outer(self.source)
        hidden, self.kwargs = [], []
        for ids in self._inputs():  # one input at a time: the windows and the batch differ in length
            captured, kwargs_by_size = capture_layer_inputs(model, ids, batch=ids.shape[0])
            hidden += captured
            self.kwargs.append(kwargs_by_size[ids.shape[0]])
        # the output's embedding may differ from the source's (a quantized embedding): embed with each
        out_embed = self._outer(self.output).get_input_embeddings()
        with torch.no_grad():
            out_hidden = [out_embed(ids).to(h.dtype) for ids, h in zip(self._inputs(), hidden, strict=True)]
        self.hidden = {"source": hidden, "output": out_hidden}

    def _inputs(self) -> list[torch.Tensor]:
        return [self.data.windows, self.data.batch]

    def _advance(self) -> None:
        if self.hidden is None:
            if not self._outer_ready(self.output):
                return
            self._capture()
        while self.next_layer < len(self.decoder):
            names = self.layer_names[self.next_layer]
            if not all(n in self.source for n in names) or not all(n in self.output for n in names):
                return
            for which, weights in (("source", self.source), ("output", self.output)):
                layer = self._layer(self.next_layer, {n: weights[n] for n in names})
                with torch.no_grad():
                    self.hidden[which] = [
                        first(layer(h, **kw)) for h, kw in zip(self.hidden[which], self.kwargs, strict=True)
                    ]
                del layer
            for n in names:
                self.source.pop(n, None)
                self.output.pop(n, None)
            self.next_layer += 1

    def _layer(self, index: int, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        return built_layer(self.decoder, self.layer_prefix, index, weights, self.compute)

    def result(self) -> LayerwiseFigures | None:
        """Both models' figures, or None when the evaluator stopped (see `stopped`)."""
        if self.stopped:
            return None
        if self.hidden is None or self.next_layer < len(self.decoder):
            self.stopped = (
                f"the layer-by-layer perplexity reached decoder layer {self.next_layer} of {len(self.decoder)}"
            )
            return None
        ids = self.data.windows
        nll = {"source": 0.0, "output": 0.0}
        diff, norm, agree, count = 0.0, 0.0, 0, 0
        with torch.no_grad():
            for which, weights in (("source", self.source), ("output", self.output)):
                model = self._outer(weights)
                for hidden, window in zip(self.hidden[which][0], ids, strict=True):
                    for start in range(0, len(window) - 1, LOGITS_CHUNK):  # a vocabulary-wide row costs memory
                        h = hidden[start : min(start + LOGITS_CHUNK, len(window) - 1)]
                        logits = model.lm_head(model.model.norm(h.unsqueeze(0))).float()[0]
                        targets = window[start + 1 : start + 1 + len(h)]
                        nll[which] += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            for row in range(self.data.batch.shape[0]):  # the logits batch, one row of both models at a time
                ref = self._logits(self.source, self.hidden["source"][1][row])
                got = self._logits(self.output, self.hidden["output"][1][row])
                diff += (got - ref).pow(2).sum().item()
                norm += ref.pow(2).sum().item()
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                count += ref.shape[0]
        predicted = ids[:, 1:].numel()
        return LayerwiseFigures(
            ppl_source=math.exp(nll["source"] / predicted),
            ppl_quantized=math.exp(nll["output"] / predicted),
            logits_rel_err=math.sqrt(diff / norm),
            top1_agreement=agree / count,
            layers=len(self.decoder),
            tokens=self.data.eval_tokens,
        )

    def _logits(self, weights: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        model = self._outer(weights)
        return model.lm_head(model.model.norm(hidden.unsqueeze(0))).float()[0]


def _param_of(flat_key: str) -> str:
    """The parameter a flattened tensor belongs to: 'a.b._weight_qdata' -> 'a.b.weight'; plain keys as they are."""
    module, _, leaf = flat_key.rpartition(".")
    if leaf.startswith("_") and "_" in leaf[1:]:
        name = leaf[1:].split("_", 1)[0]
        return f"{module}.{name}" if module else name
    return flat_key


def _plain_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    names = getattr(tensor, "tensor_data_names", None)
    if names:
        return [getattr(tensor, n) for n in names if getattr(tensor, n, None) is not None]
    return [tensor]


def built_layer(
    decoder: torch.nn.ModuleList, layer_prefix: str, index: int, weights: dict[str, torch.Tensor], compute: torch.dtype
) -> torch.nn.Module:
    """A copy of the meta model's decoder layer `index` with `weights` (named from the model's root) in the compute
    dtype; every parameter must be given."""
    layer = copy.deepcopy(decoder[index])
    prefix = f"{layer_prefix}{index}."
    for name, tensor in weights.items():
        assign_parameter(layer, name.removeprefix(prefix), for_compute(cpu_runnable(tensor), compute))
    left = [n for n, p in layer.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"decoder layer {index} has no weights for {left[:3]}")
    return layer


def rebuild_rotary(model: torch.nn.Module) -> None:
    """A meta model's rotary embedding rebuilt on the CPU: its buffers are computed, not read from a checkpoint."""
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None and any(b.is_meta for b in rotary.buffers()):
        with torch.device("cpu"):
            model.model.rotary_emb = type(rotary)(config=model.config)


def assign_parameter(root: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = root.get_submodule(module_name) if module_name else root
    setattr(module, leaf, torch.nn.Parameter(tensor, requires_grad=False))
