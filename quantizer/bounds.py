"""Bounds on what a source's small files may make a job read or allocate, checked before they are read or acted on.

A source's files are written by whoever uploaded it. Its side files (config, index, card, tokenizer, template) are
read whole, so each has a size cap, checked from the Hub's file list or the disk before any is downloaded or read.
Its config decides what loading allocates: weights the checkpoint does not hold are allocated all the same (a config
claiming an MLP a thousand times wider than the files allocates gigabytes), and preflight builds the model on the
meta device, which costs memory per layer. So the config's sizes are bounded first, then the parameters it implies
are counted arithmetically (a lower bound, from the embedding and the MLPs) and compared with the bytes the weight
files hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import SourceError

T = TypeVar("T")

MB = 1024**2
# The largest side file of each kind a job reads (real ones: configs and cards of kilobytes, indexes of a few MB for
# the largest models, tokenizer.json up to about 35 MB for 256k-token vocabularies)
SIDE_FILE_LIMITS = {
    "config.json": 1 * MB,
    "generation_config.json": 1 * MB,
    "README.md": 2 * MB,
    "chat_template.jinja": 1 * MB,
    "chat_template.json": 1 * MB,
    "special_tokens_map.json": 4 * MB,
    "added_tokens.json": 16 * MB,
    "tokenizer_config.json": 16 * MB,
}
INDEX_LIMIT = 64 * MB  # *.index.json
DEFAULT_SIDE_LIMIT = 128 * MB  # tokenizer.json, tokenizer.model, vocab.json, merges.txt

# The largest size of each dimension a config may give (about 10x today's largest models); beyond them even building
# the model on the meta device, or counting its parameters, is not worth doing
DIMENSION_LIMITS = {
    "num_hidden_layers": 1_024,
    "hidden_size": 65_536,
    "intermediate_size": 1_048_576,
    "moe_intermediate_size": 1_048_576,
    "vocab_size": 4_194_304,
    "num_attention_heads": 4_096,
    "num_key_value_heads": 4_096,
    "head_dim": 65_536,
    "num_experts": 4_096,
    "num_local_experts": 4_096,
    "n_routed_experts": 4_096,
}
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
BYTES_PER_PARAMETER = 2  # the narrowest dtype an unquantized checkpoint stores (bf16, fp16)
SLACK = 1.5  # the lower bound may exceed the files by this much before they are called incomplete


def side_file_limit(name: str) -> int:
    if name.endswith(".index.json"):
        return INDEX_LIMIT
    return SIDE_FILE_LIMITS.get(name.rsplit("/", 1)[-1], DEFAULT_SIDE_LIMIT)


def check_side_files(sizes: dict[str, int], names: list[str], where: str) -> None:
    """Refuse a source whose side files (`names`, with `sizes` in bytes) are larger than a job should read."""
    for name in names:
        size, limit = sizes.get(name, 0), side_file_limit(name)
        if size > limit:
            raise SourceError(
                f"{where}: {name} is {size / MB:.1f} MB, more than the {limit / MB:.0f} MB such a file may be; a real "
                "one is far smaller: re-save it with transformers."
            )


def dimension(config: dict, key: str, where: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SourceError(f"{where}: config.json's {key} is {value!r}, not a whole number; fix or re-save it.")
    limit = DIMENSION_LIMITS[key]
    if value > limit:
        raise SourceError(
            f"{where}: config.json's {key} is {value:,}, beyond anything a model has ({limit:,} at most here); "
            "fix or re-save it."
        )
    return value


def implied_parameters(config: dict, where: str) -> int:
    """A lower bound of the parameters `config` describes: the input embedding and two matrices of each layer's MLP
    (of every expert, for a mixture of experts). Every size is checked against DIMENSION_LIMITS on the way."""
    sizes = {key: dimension(config, key, where) for key in DIMENSION_LIMITS}
    layers, hidden = sizes["num_hidden_layers"] or 0, sizes["hidden_size"] or 0
    experts = max((sizes[key] or 0 for key in EXPERT_KEYS), default=0)
    if experts:
        width = (sizes["moe_intermediate_size"] or sizes["intermediate_size"] or 0) * experts
    else:
        width = sizes["intermediate_size"] or 0
    return (sizes["vocab_size"] or 0) * hidden + layers * 2 * hidden * width


def check_config_fits_files(config: dict, weight_bytes: int, where: str) -> None:
    """Refuse a config that describes far more weights than the files hold: loading would allocate the rest."""
    implied = implied_parameters(config, where)
    if config.get("quantization_config"):  # stored in fewer bytes a parameter; not a source this project takes
        return
    if implied * BYTES_PER_PARAMETER > SLACK * weight_bytes:
        raise SourceError(
            f"{where}: config.json describes at least {implied / 1e9:.2f}B parameters "
            f"({implied * BYTES_PER_PARAMETER / 1e9:.2f} GB in bf16), but the weight files hold "
            f"{weight_bytes / 1e9:.2f} GB: loading would allocate the weights they lack. Make config.json match the "
            "checkpoint (or upload the missing weights)."
        )


def within(seconds: float, what: str, fn: Callable[[], T]) -> T:
    """`fn()`, or a SourceError when it has not returned after `seconds` (a source's template or tokenizer that
    never finishes). Whatever `fn` raises is raised here; a call that overran is left to end with the job's process."""
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # a panic too: raised again in the job's thread
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="bounded-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise SourceError(f"{what} did not finish within {seconds:g} s: fix it and re-save it.")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
