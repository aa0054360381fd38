"""Whose token a job uses, who the visitor is, and where they may push.

A shared deployment (a Space: SPACE_ID set, or any host with QUANTIZER_PUBLIC=1) serves strangers:
a visitor's job uses the visitor's sign-in or the token they typed, never the host's own HF_TOKEN
(that would push into the owner's account), and every job needs a signed-in visitor, whose name
keys their jobs and their history. Off such a deployment (a local run, a script) the environment's
token is a fine default and the single user is "local".
"""

from __future__ import annotations

import gradio as gr

from quantizer import settings
from quantizer.errors import AuthError, QuantizerError
from quantizer.hub import Hub

LOCAL_USER = "local"


def on_space() -> bool:
    return bool(settings.get("SPACE_ID"))


def public() -> bool:
    """The app serves strangers: sources are Hub repos only, and every job needs a signed-in visitor."""
    return on_space() or settings.get("QUANTIZER_PUBLIC")


def oauth_configured() -> bool:
    """The Space's OAuth variables (set by the Hub when README.md says hf_oauth: true)."""
    return on_space() and len(settings.present(settings.OAUTH_VARIABLES)) == len(settings.OAUTH_VARIABLES)


def resolve_token(typed: str | None, oauth_token: str | None) -> str | None:
    """Sign-in first, then a typed token, then (off a Space only) HF_TOKEN."""
    if oauth_token:
        return oauth_token
    if typed and typed.strip():
        return typed.strip()
    return None if public() else settings.get("HF_TOKEN") or None


def token_for(typed: str | None, oauth_token: gr.OAuthToken | None) -> str | None:
    """The token a request acts with, from what the page or the API sent (see resolve_token)."""
    return resolve_token(typed, oauth_token.token if oauth_token else None)


def visitor(token: str | None) -> str:
    """Who a job or a request belongs to: the token's account on a shared deployment, else the local user."""
    if not public():
        return LOCAL_USER
    if not token:
        raise AuthError("sign in with Hugging Face first: jobs on this shared Space run for signed-in visitors only.")
    return Hub(token).whoami().name


def namespaces(token: str | None) -> tuple[list[str], str]:
    """The namespaces the token may push to, and a line to show under the dropdown."""
    if not token:
        return [], "sign in or give a token to choose where to push"
    try:
        identity = Hub(token).whoami()
    except QuantizerError as exc:
        return [], str(exc)
    return list(identity.namespaces), f"signed in as {identity.name}"
