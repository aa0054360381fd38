"""Whose token a job uses, and where it may push.

On a Space (SPACE_ID set) a visitor's job uses the visitor's sign-in or the token they typed, and
never the Space's own HF_TOKEN secret: on a public Space that would push into the owner's account.
Off a Space (a local run, a duplicate without OAuth, a script) the environment's token is a fine
default.
"""

from __future__ import annotations

import os

from quantizer.errors import QuantizerError
from quantizer.hub import Hub


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def oauth_configured() -> bool:
    """The Space's OAuth variables (set by the Hub when README.md says hf_oauth: true)."""
    return on_space() and all(
        os.environ.get(name) for name in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OPENID_PROVIDER_URL")
    )


def resolve_token(typed: str | None, oauth_token: str | None) -> str | None:
    """Sign-in first, then a typed token, then (off a Space only) HF_TOKEN."""
    if oauth_token:
        return oauth_token
    if typed and typed.strip():
        return typed.strip()
    return None if on_space() else os.environ.get("HF_TOKEN") or None


def namespaces(token: str | None) -> tuple[list[str], str]:
    """The namespaces the token may push to, and a line to show under the dropdown."""
    if not token:
        return [], "sign in or give a token to choose where to push"
    try:
        identity = Hub(token).whoami()
    except QuantizerError as exc:
        return [], str(exc)
    return list(identity.namespaces), f"signed in as {identity.name}"
