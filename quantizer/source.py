"""Where a model comes from, and the checks made before any weight is read.

A source is anything that can `inspect()` itself cheaply (config and file list only) and
`fetch()` what a job needs: a `Fetched` folder with config and tokenizer, holding the weights too,
or handing out one weight shard at a time (the streaming engine). `LocalSource` is a folder on
disk; `HubSource` a repo. The pipeline never asks which one it has.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from huggingface_hub.repocard import metadata_load
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .bounds import check_side_files
from .errors import SourceError
from .events import EventStream
from .hub import Hub

REPO_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")

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


@dataclass(frozen=True, kw_only=True)
class SourceInfo:
    """What preflight learned about a source without reading its weights."""

    ref: str  # what the user gave: a folder path or a repo id
    name: str  # short model name, used for output names
    config: dict
    architecture: str
    model_type: str
    weight_files: tuple[str, ...]
    weight_bytes: int
    revision: str | None = None  # the commit the job reads (Hub sources)
    repo_id: str | None = None  # None for a local folder
    files: tuple[str, ...] = field(default=())
    card_data: dict = field(default_factory=dict)  # the source card's YAML header (license, pipeline_tag, ...)
    largest_weight_file: int = 0  # bytes: what streaming holds on disk at a time
    private: bool = False  # a private Hub repo
    gated: bool = False  # a gated Hub repo (its license must be accepted)

    @property
    def safetensors(self) -> bool:
        return all(f.endswith(".safetensors") for f in self.weight_files)

    @property
    def side_files(self) -> list[str]:
        """Everything a job needs except the weight shards themselves."""
        return [f for f in self.needed_files if f not in self.weight_files]

    @property
    def needed_files(self) -> list[str]:
        """What a job downloads: weights plus config, generation config, tokenizer and chat template."""
        return [*self.weight_files, *(f for f in self.files if f in SIDE_FILES), *self._index_files]

    @property
    def _index_files(self) -> list[str]:
        """The shard index of the chosen weights, by its exact name (never a path that merely starts like one)."""
        index = index_name(list(self.files), list(self.weight_files)) if self.weight_files else None
        return [index] if index else []

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", True))


@dataclass(frozen=True, kw_only=True)
class Fetched:
    """What a job has of its source: a folder with config, tokenizer and shard index, and each weight shard
    through `shard` (already in the folder when `weights_here`, else fetched on demand and given back with
    `release` once it has been read)."""

    folder: Path
    weights_here: bool
    shard: Callable[[str], Path]
    release: Callable[[str], None]


def keep(_name: str) -> None:
    """`release` for shards the job does not own (a local folder, a whole download removed with the job)."""


def in_folder(folder: Path) -> Callable[[str], Path]:
    return lambda name: folder / name


class Source(Protocol):
    """A model to quantize: inspect it cheaply, then fetch what a job needs."""

    def inspect(self) -> SourceInfo: ...

    def fetch(self, workdir: Path, events: EventStream, *, weights: bool = True) -> Fetched:
        """Everything but the weights into a folder under `workdir`; the weights too when `weights`."""
        ...


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


def check_index(index_text: str, weights: list[str], where: str, index_name: str) -> None:
    """Every shard an index names must be one of the source's own weight files, named as listed: a crafted
    index with an absolute name or `..` would otherwise point the loader at any file on this machine."""
    try:
        weight_map = json.loads(index_text)["weight_map"]
        names = set(weight_map.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SourceError(
            f"{where}: {index_name} is not a valid shard index (no weight_map); fix or re-save it."
        ) from None
    strangers = sorted((n for n in names if not isinstance(n, str) or n not in weights), key=str)
    if strangers:
        shown = ", ".join(repr(n) for n in strangers[:3])
        raise SourceError(
            f"{where}: {index_name} names weight files that are not files of this model ({shown}); only the "
            "model's own shard file names are allowed: fix the index."
        )


def index_name(files: list[str], weights: list[str]) -> str | None:
    """The shard index that goes with the chosen weights, if the source has one."""
    name = "model.safetensors.index.json" if weights[0].endswith(".safetensors") else "pytorch_model.bin.index.json"
    return name if name in files else None


def read_whole(files: list[str], weights: list[str]) -> list[str]:
    """The files of a source that a job reads whole: its side files, its shard index and its card."""
    index = index_name(files, weights)
    return [f for f in files if f in SIDE_FILES or f == "README.md" or f == index]


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
        check_side_files({f: (self.path / f).stat().st_size for f in files}, read_whole(files, weights), where)
        if index := index_name(files, weights):
            check_index((self.path / index).read_text(), weights, where, index)
        config = read_config(self.path / "config.json", where)
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
            card_data=read_card_data(self.path / "README.md"),
            largest_weight_file=max((self.path / f).stat().st_size for f in weights),
        )

    def fetch(self, workdir: Path, events: EventStream, *, weights: bool = True) -> Fetched:
        """Used in place: the weights are always here already."""
        return Fetched(folder=self.path, weights_here=True, shard=in_folder(self.path), release=keep)


class HubSource:
    """A model repo on the Hub: inspected through the API, then only the needed files are downloaded."""

    def __init__(self, repo_id: str, revision: str | None, hub: Hub):
        self.repo_id, self.revision, self.hub = repo_id, revision, hub
        self._info: SourceInfo | None = None

    def inspect(self) -> SourceInfo:
        where = f"{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        facts = self.hub.repo_info(self.repo_id, self.revision)
        sha = facts.sha
        sizes = self.hub.file_sizes(self.repo_id, sha)
        files = sorted(sizes)
        weights = check_files(files, where)
        check_side_files(sizes, read_whole(files, weights), where)  # before any of them is downloaded
        with tempfile.TemporaryDirectory(prefix="quantizer-preflight-") as tmp:
            if index := index_name(files, weights):
                index_path = self.hub.download_file(self.repo_id, sha, index, Path(tmp))
                check_index(index_path.read_text() if index_path else "", weights, where, index)
            config_path = self.hub.download_file(self.repo_id, sha, "config.json", Path(tmp))
            config = read_config(config_path, where) if config_path else {}
            card_path = (
                self.hub.download_file(self.repo_id, sha, "README.md", Path(tmp)) if "README.md" in files else None
            )
            card_data = read_card_data(card_path) if card_path else {}
        architecture, model_type = check_config(config, where)
        self._info = SourceInfo(
            ref=where,
            name=self.repo_id.split("/")[1],
            config=config,
            architecture=architecture,
            model_type=model_type,
            weight_files=tuple(weights),
            weight_bytes=sum(sizes[f] for f in weights),
            revision=sha,
            repo_id=self.repo_id,
            files=tuple(files),
            card_data=card_data,
            largest_weight_file=max(sizes[f] for f in weights),
            private=facts.private,
            gated=facts.gated,
        )
        return self._info

    def fetch(self, workdir: Path, events: EventStream, *, weights: bool = True) -> Fetched:
        info = self._info or self.inspect()
        folder = workdir / "source"
        if weights:
            events.log(
                f"downloading {len(info.needed_files)} files ({info.weight_bytes / 1e6:.1f} MB of weights) "
                f"from {self.repo_id}@{info.revision[:8]}"
            )
            self.hub.download(self.repo_id, info.revision, info.needed_files, folder)
            return Fetched(folder=folder, weights_here=True, shard=in_folder(folder), release=keep)
        events.log(
            f"downloading config and tokenizer from {self.repo_id}@{info.revision[:8]}; weights follow "
            "one shard at a time"
        )
        self.hub.download(self.repo_id, info.revision, info.side_files, folder)
        shards = workdir / "shards"

        def release(name: str) -> None:
            (shards / name).unlink(missing_ok=True)

        return Fetched(
            folder=folder, weights_here=False, shard=lambda name: self.download_shard(name, shards), release=release
        )

    def download_shard(self, name: str, folder: Path) -> Path:
        info = self._info or self.inspect()
        path = self.hub.download_file(self.repo_id, info.revision, name, folder)
        if path is None:
            raise SourceError(f"{self.repo_id} lost its weight file {name} during the job; try again.")
        return path


def read_config(path: Path, where: str) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{where}: config.json cannot be read ({exc}); fix or re-save it.") from None
    if not isinstance(config, dict):
        raise SourceError(f"{where}: config.json is not a JSON object; fix or re-save it.")
    return config


def read_card_data(path: Path) -> dict:
    """The YAML header of a model card, or {} when there is none or it does not parse."""
    if not Path(path).is_file():
        return {}
    try:
        return metadata_load(path) or {}
    except Exception:  # a broken card must not block quantization; the new card just copies less
        return {}


def parse_repo_ref(ref: str) -> tuple[str, str | None] | None:
    """`namespace/name[@revision]` -> (repo_id, revision); None when `ref` is not shaped like a repo id."""
    match = REPO_REF.match(ref.strip())
    return (match["repo"], match["revision"]) if match else None


HUB_ONLY = (
    "on this shared Space a source is a Hub repo id (namespace/name or namespace/name@revision); folders on "
    "the Space's disk cannot be used: upload your model to the Hub first."
)


def open_source(ref: str, hub: Hub | None = None, *, allow_local: bool = True) -> Source:
    """An existing folder is a LocalSource; `namespace/name[@rev]` a HubSource; anything else a (missing) folder.
    Without `allow_local` (a shared deployment) only repo ids are taken, decided before the disk is looked at."""
    parsed = parse_repo_ref(ref)
    if not allow_local:
        if parsed is None:
            raise SourceError(HUB_ONLY)
        return HubSource(parsed[0], parsed[1], hub or Hub(None))
    path = Path(ref).expanduser()
    if path.exists() or parsed is None or ref.startswith((".", "/", "~")):
        return LocalSource(path)
    return HubSource(parsed[0], parsed[1], hub or Hub(None))


def copy_side_files(source_dir: Path, output_dir: Path) -> list[str]:
    """Copy tokenizer files and the chat template beside the saved weights."""
    copied = []
    for name in TOKENIZER_FILES:
        src = source_dir / name
        if src.is_file():
            shutil.copy2(src, output_dir / name)
            copied.append(name)
    return copied
