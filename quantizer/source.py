"""Where a model comes from, and the checks made before any weight is read.

A source is anything that can `inspect()` itself cheaply (config and file list only) and
`fetch()` the files a job needs into a folder. `LocalSource` is a folder on disk; the Hub
source plugs in through the same two methods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .errors import SourceError
from .events import EventStream

# Everything besides the weights that a loadable, chat-ready output needs.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def _causal_lm_classes() -> set[str]:
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (tuple, list)) else (value,))
    return names


CAUSAL_LM_CLASSES = _causal_lm_classes()


@dataclass(frozen=True)
class SourceInfo:
    """What preflight learned about a source without reading its weights."""

    ref: str  # what the user gave: a folder path or a repo id
    name: str  # short model name, used for output names
    config: dict
    architecture: str
    model_type: str
    weight_files: tuple[str, ...]
    weight_bytes: int
    revision: str | None = None
    files: tuple[str, ...] = field(default=())

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", True))


class Source(Protocol):
    """A model to quantize: inspect it cheaply, then fetch what a job needs."""

    def inspect(self) -> SourceInfo: ...

    def fetch(self, workdir: Path, events: EventStream) -> Path: ...


def select_weight_files(files: list[str]) -> list[str]:
    """Prefer safetensors; fall back to PyTorch .bin only when there is nothing else."""
    safetensors = sorted(f for f in files if f.endswith(".safetensors") and "/" not in f)
    if safetensors:
        return safetensors
    return sorted(f for f in files if f.endswith(".bin") and f.startswith("pytorch_model") and "/" not in f)


def check_config(config: dict, where: str) -> tuple[str, str]:
    """Return (architecture, model_type), or explain why this is not a causal LM transformers knows."""
    model_type = config.get("model_type")
    if not model_type:
        raise SourceError(f"{where}: config.json has no model_type, so transformers cannot tell what model it is.")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise SourceError(
            f"{where}: model type '{model_type}' is not known to this version of transformers; "
            "quantize a model of a supported architecture (Llama, SmolLM3, Qwen, Mistral, ...)."
        )
    architectures = config.get("architectures") or []
    if architectures:
        architecture = architectures[0]
        if architecture not in CAUSAL_LM_CLASSES:
            raise SourceError(
                f"{where}: '{architecture}' is not a causal language model; only models that "
                "AutoModelForCausalLM loads (text generation) can be quantized here."
            )
    elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    else:
        raise SourceError(f"{where}: model type '{model_type}' has no causal language model class in transformers.")
    return architecture, model_type


def check_files(files: list[str], where: str) -> list[str]:
    """Refuse adapters and folders without config or weights; return the weight files to use."""
    if "adapter_config.json" in files:
        raise SourceError(
            f"{where} is a LoRA/PEFT adapter (adapter_config.json): merge the adapter into its base model "
            "first (peft's merge_and_unload, then save_pretrained) and quantize the merged model."
        )
    if "config.json" not in files:
        raise SourceError(f"{where} has no config.json: it is not a transformers model folder.")
    weights = select_weight_files(files)
    if not weights:
        raise SourceError(
            f"{where} has no weights (*.safetensors or pytorch_model*.bin): upload or save the model's weights."
        )
    if not any(f in files for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise SourceError(
            f"{where} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json): save the tokenizer "
            "with the model (tokenizer.save_pretrained) so the quantized copy is usable and can be verified."
        )
    return weights


class LocalSource:
    """A model folder on this machine, used in place (nothing is copied)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def inspect(self) -> SourceInfo:
        where = f"source folder '{self.path}'"
        if not self.path.exists():
            raise SourceError(f"{where} does not exist: give a model folder or a Hub repo id (namespace/name).")
        if not self.path.is_dir():
            raise SourceError(f"{where} is a file, not a folder: give the folder that holds config.json.")
        files = sorted(p.name for p in self.path.iterdir() if p.is_file())
        weights = check_files(files, where)
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SourceError(f"{where}: config.json cannot be read ({exc}); fix or re-save it.") from None
        architecture, model_type = check_config(config, where)
        return SourceInfo(
            ref=str(self.path),
            name=self.path.resolve().name,
            config=config,
            architecture=architecture,
            model_type=model_type,
            weight_files=tuple(weights),
            weight_bytes=sum((self.path / f).stat().st_size for f in weights),
            files=tuple(files),
        )

    def fetch(self, workdir: Path, events: EventStream) -> Path:
        return self.path


def open_source(ref: str) -> Source:
    """A folder path becomes a LocalSource (Hub repo ids are added by the Hub module)."""
    return LocalSource(ref)
