"""Names of outputs: one target per quantization type."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError
from .recipes import Recipe
from .source import parse_repo_ref

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def split_repo_id(repo_id: str) -> tuple[str | None, str]:
    """`namespace/name` -> (namespace, name); a bare `name` -> (None, name). Validates both parts."""
    parts = repo_id.strip().split("/")
    if len(parts) > 2 or not all(_NAME.match(p) for p in parts) or any(".." in p for p in parts):
        raise InputError(
            f"'{repo_id}' is not a valid target name: use namespace/name or name, with letters, digits, "
            "'-', '_' and '.' (at most 96 characters each)."
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def base_target_name(source_name: str) -> str:
    """The name several types share before each adds its suffix."""
    return f"{source_name}-torchao"


def default_target_name(source_name: str, recipe: Recipe) -> str:
    return f"{base_target_name(source_name)}-{recipe.suffix}"


def source_name(ref: str) -> str:
    """The model name of a source as the user typed it: the repo's name, or the folder's."""
    parsed = parse_repo_ref(ref or "")
    if parsed:
        return parsed[0].split("/")[1]
    return Path(ref or "model").name or "model"


def suggested_target_name(source: str, recipes: list[Recipe]) -> str:
    """What the form proposes: the default name of the one type, or the shared base that each type extends."""
    name = source_name(source)
    return default_target_name(name, recipes[0]) if len(recipes) == 1 else base_target_name(name)


def target_for(target: str | None, source_name: str, recipe: Recipe, several: bool) -> str:
    """The target for one recipe: TARGET as given for a single type, TARGET-suffix for several,
    `{source}-torchao-{suffix}` when no TARGET was given."""
    if not target:
        return default_target_name(source_name, recipe)
    namespace, name = split_repo_id(target)
    if several:
        name = f"{name}-{recipe.suffix}"
    return f"{namespace}/{name}" if namespace else name
