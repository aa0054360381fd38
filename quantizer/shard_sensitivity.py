"""Mixed precision's calibration pass for a model that is streamed: each Linear's sensitivity from the source's
shards, one decoder layer at a time.

The calibration tokens enter the first decoder layer through the model's own forward (embedding, position
embeddings, mask), stopped there; each decoder layer is built from the source's tensors as soon as its shard
holds them all, run on the hidden states with the same hooks as `int4.gptq.calibrated_layers` (which the
whole-model engine runs on the loaded model), and dropped. Both walk the same layers with the same arithmetic, so
they measure the same sensitivities and keep the same layers in int8.

Memory: the embedding, one decoder layer, and the calibration tokens' hidden states. A checkpoint whose shards
put decoder layers before the embedding makes it hold those layers until the embedding comes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from .compute import cast_floats, compute_dtype, for_compute, stored_dtype
from .int4 import mixed
from .int4.gptq import capture_layer_inputs, layer_hessians
from .layers import decoder_layers, meta_model
from .layerwise import assign_parameter, built_layer, rebuild_rotary


class ShardSensitivity:
    """Feed it the source's shards in order (`feed`); `result()` once all are fed."""

    def __init__(self, config_dict: dict, names: list[str], calibration: torch.Tensor, group_size: int) -> None:
        self.skeleton = meta_model(config_dict)
        self.compute = compute_dtype(stored_dtype(config_dict), "cpu")
        self.calibration, self.group_size = calibration, group_size
        prefix, self.decoder = decoder_layers(self.skeleton)
        self.layer_prefix = prefix + "."
        params = dict(self.skeleton.named_parameters(remove_duplicate=False))
        self.layer_names = [
            sorted(n for n in params if n.startswith(f"{self.layer_prefix}{i}.")) for i in range(len(self.decoder))
        ]
        self.embedding = next(n for n, p in params.items() if p is self.skeleton.get_input_embeddings().weight)
        self.names = names
        self.tensors: dict[str, torch.Tensor] = {}
        self.hidden: list[torch.Tensor] | None = None
        self.kwargs: dict = {}
        self.next_layer = 0
        self.errors: dict[str, float] = {}

    def feed(self, source_file: Path) -> None:
        with safe_open(str(source_file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - a safetensors file, not a dict
                if self._wanted(key):
                    self.tensors[key] = f.get_tensor(key)
        self._advance()

    def result(self) -> dict[str, float]:
        missing = [n for n in self.names if n not in self.errors]
        if missing:
            raise ValueError(f"the source's shards hold no weights for {missing[:3]}")
        return {name: self.errors[name] for name in self.names}

    def _wanted(self, key: str) -> bool:
        if key == self.embedding:
            return True
        if not key.startswith(self.layer_prefix):
            return False
        return int(key[len(self.layer_prefix) :].split(".", 1)[0]) >= self.next_layer

    def _capture(self) -> None:
        """The hidden states entering the first decoder layer, from the model's own forward."""
        assign_parameter(self.skeleton, self.embedding, for_compute(self.tensors[self.embedding], self.compute))
        rebuild_rotary(self.skeleton)
        hidden, kwargs = capture_layer_inputs(self.skeleton, self.calibration, batch=8)
        self.hidden, self.kwargs = cast_floats(hidden, self.compute), cast_floats(kwargs, self.compute)

    def _advance(self) -> None:
        if self.hidden is None:
            if self.embedding not in self.tensors:
                return
            self._capture()
        while self.next_layer < len(self.decoder):
            index, names = self.next_layer, self.layer_names[self.next_layer]
            if not all(n in self.tensors for n in names):
                return
            layer = built_layer(
                self.decoder, self.layer_prefix, index, {n: self.tensors[n] for n in names}, self.compute
            )
            prefix = f"{self.layer_prefix}{index}."
            running = {n: layer.get_submodule(n.removeprefix(prefix)) for n in self.names if n.startswith(prefix)}
            groups, self.hidden = layer_hessians(layer, running, self.hidden, self.kwargs)
            self.errors.update(mixed.group_errors(groups, lambda name: self.tensors[f"{name}.weight"], self.group_size))
            for name in names:
                self.tensors.pop(name)
            self.next_layer += 1
