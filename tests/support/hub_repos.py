"""Source repos on the loopback Hub, uploaded with the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import HfApi

SOURCE_CARD = """---
license: apache-2.0
language:
- en
pipeline_tag: text-generation
---
# tiny SmolLM3

A tiny random SmolLM3 for tests.
"""


def upload_model(
    api: HfApi, repo_id: str, folder: Path, *, card: str | None = SOURCE_CARD, private: bool = False
) -> str:
    """Create `repo_id` and upload the folder (plus a card) in one commit; returns the commit oid."""
    api.create_repo(repo_id, private=private, exist_ok=True)
    if card is not None:
        (folder / "README.md").write_text(card)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="add model").oid


def variant(
    source: Path,
    dest: Path,
    *,
    drop: tuple[str, ...] = (),
    config: dict | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """A copy of a model folder with files dropped, config keys changed, or files added."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*drop))
    if config:
        path = dest / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    for name, text in (extra or {}).items():
        (dest / name).write_text(text)
    return dest
