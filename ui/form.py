"""The form, defined once: each field's name, type, default and component.

`FormValues` is the one list of the form's fields. From it follow the page's inputs (in its order),
the `quantize` API's signature (names, types and defaults, so a script can pass `source` alone and
the rest by keyword), and the `JobSpec` a job runs with. A field is added here and nowhere else.
"""

from __future__ import annotations

import inspect
import typing
import uuid
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr

from quantizer import int4, recipes, settings
from quantizer.errors import InputError
from quantizer.hardware import Hardware
from quantizer.recipes import DEFAULT_GROUP_SIZE, GROUP_SIZES
from quantizer.spec import JobSpec

from . import limits
from .auth import public

AUTO_GROUP = f"auto ({DEFAULT_GROUP_SIZE}, lowered to fit the model)"
AUTO = "auto"
DEFAULT_TYPE = recipes.DEFAULT_TYPE


def output_root() -> Path:
    """Where "save on the Space only" keeps outputs (QUANTIZER_OUTPUT_ROOT)."""
    return Path(settings.get("QUANTIZER_OUTPUT_ROOT"))


@dataclass(frozen=True, kw_only=True)
class FormValues:
    """What the page and the API send; every field but `source` may be left out by an API caller."""

    source: str
    quant_types: list[str] = field(default_factory=lambda: [DEFAULT_TYPE])
    group_size: str = AUTO_GROUP  # AUTO_GROUP or one of GROUP_SIZES as text
    int4_method: str = AUTO  # AUTO or a name from quantizer.int4.METHODS
    target_name: str = ""  # empty: {source name}-torchao-{suffix}
    namespace: str | None = None  # None or empty: the token's owner
    private: bool = False
    overwrite: bool = False
    save_only: bool = False
    token: str | None = None  # None or empty: the sign-in (on a Space) or HF_TOKEN (elsewhere)
    on_jobs: str = ""  # a Hugging Face Jobs flavor to run on, in the visitor's account; empty: this Space
    more_sources: str = ""  # with on_jobs: more sources, one a line (SOURCE [TARGET]), a Job each
    int4_mixed: float | None = None  # mixed precision's budget in bits per Linear weight; None or 0: all int4

    def to_spec(self, token: str | None) -> JobSpec:
        """The job these values ask for; values the form would never send are refused with a sentence. On a
        shared deployment the host's limits come with it."""
        types = list(self.quant_types or [])
        shared = public()
        return JobSpec(
            public=shared,
            max_source_bytes=limits.max_source_bytes(shared),
            deadline_seconds=limits.deadline_seconds(shared),
            source=(self.source or "").strip(),
            target=(self.target_name or "").strip() or None,
            namespace=(self.namespace or "").strip() or None,
            quant_types=types,
            group_size=parse_group_size(self.group_size),
            int4_method=None if self.int4_method in (None, "", AUTO) else self.int4_method,
            int4_mixed=parse_mixed_bits(self.int4_mixed),
            save_only=bool(self.save_only),
            output_dir=output_root() / uuid.uuid4().hex[:12] if self.save_only else None,
            overwrite=bool(self.overwrite),
            token=token,
            private=True if self.private else None,  # unchecked: private when the source is private or gated
        )


def parse_group_size(value: str | int | None) -> int | None:
    if value in (None, "", AUTO, AUTO_GROUP):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        sizes = ", ".join(map(str, sorted(GROUP_SIZES)))
        raise InputError(f"group size '{value}' is not a number: use '{AUTO}' or one of {sizes}.") from None


def parse_mixed_bits(value: float | str | None) -> float | None:
    """The form's number: empty or 0 is off (all int4); anything else must be a number (its range is the job's
    own check, with its sentence)."""
    if value in (None, "", 0):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"int4 mixed precision '{value}' is not a number: give bits per weight, like 5.5.") from None


NAMES = tuple(f.name for f in fields(FormValues))
POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD


def default(name: str) -> Any:
    f = next(f for f in fields(FormValues) if f.name == name)
    return f.default_factory() if f.default_factory is not MISSING else (None if f.default is MISSING else f.default)


def type_choices(hardware: Hardware) -> tuple[list[tuple[str, str]], list[str]]:
    """Checkbox choices for the types this hardware runs, and a line for each it cannot (shown struck through)."""
    runnable, refused = [], []
    for r in recipes.RECIPES.values():
        reason = r.unsupported_reason(hardware)
        if reason:
            refused.append(f"- ~~{r.name}~~: {reason}")
        else:
            runnable.append((f"{r.name}: {r.description} ({r.hardware_text})", r.name))
    return runnable, refused


def method_choices() -> list[tuple[str, str]]:
    return [(int4.auto_description(), AUTO)] + [(f"{m.name}: {m.description}", m.name) for m in int4.METHODS.values()]


def components(hardware: Hardware, *, show_token: bool) -> dict[str, Callable[[], gr.components.Component]]:
    """A builder per field, each starting at the field's default, so the page and the API agree on it."""
    runnable, _ = type_choices(hardware)
    return (
        jobs_components()
        | int4_components()
        | {
            "source": lambda: gr.Textbox(
                label="Source model", placeholder="namespace/name or namespace/name@revision", elem_id="source"
            ),
            "quant_types": lambda: gr.CheckboxGroup(
                runnable, value=default("quant_types"), label="Quantization types", elem_id="quant-types"
            ),
            "target_name": lambda: gr.Textbox(
                value=default("target_name"),
                label="Target name",
                elem_id="target-name",
                info="several types each add their suffix",
            ),
            "namespace": lambda: gr.Dropdown(
                [],
                value=None,
                label="Namespace",
                allow_custom_value=True,
                info="sign in or give a token to choose where to push",
            ),
            "private": lambda: gr.Checkbox(
                value=default("private"),
                label="Private repo",
                info="a private or gated source always gives a private repo, so nothing you could not share leaks",
            ),
            "overwrite": lambda: gr.Checkbox(value=default("overwrite"), label="Overwrite an existing repo"),
            "save_only": lambda: gr.Checkbox(
                value=default("save_only"), label="Save on the Space only (no push)", elem_id="save-only"
            ),
            "token": lambda: gr.Textbox(
                label="Hugging Face token",
                type="password",
                placeholder="hf_…",
                visible=show_token,
                info="write access to the target namespace; never shown or stored",
            ),
        }
    )


def int4_components() -> dict[str, Callable[[], gr.components.Component]]:
    """How the int4 types are made: group size, method, and mixed precision's budget."""
    return {
        "group_size": lambda: gr.Dropdown(
            [AUTO_GROUP, *map(str, GROUP_SIZES)],
            value=default("group_size"),
            label="Group size (int4 types)",
            allow_custom_value=True,  # an API caller's odd value reaches the job's own check and its sentence
        ),
        "int4_method": lambda: gr.Dropdown(
            method_choices(),
            value=default("int4_method"),
            label="int4 method (how the int4 values are chosen)",
            allow_custom_value=True,
            info="how the 4-bit values are chosen: gptq is calibrated on real text and closest to the "
            "source; asym is instant; rtn is torchao's plain rounding",
            elem_id="int4-method",
        ),
        "int4_mixed": lambda: gr.Number(
            value=default("int4_mixed"),
            label="int4 mixed precision: bits per weight (0: off)",
            minimum=0,
            maximum=8,
            step=0.25,
            info="int4_weight_only keeps its layers most sensitive to int4 in int8, within this average (int4 at "
            "group size 32 is 5.0 bits, int8 8; for example 5.5); measured on calibration text",
            elem_id="int4-mixed",
        ),
    }


def jobs_components() -> dict[str, Callable[[], gr.components.Component]]:
    """Where the job runs: this Space, or Hugging Face Jobs in the visitor's account, with more sources."""
    return {
        "on_jobs": lambda: gr.Dropdown(
            [("this Space", "")],
            value=default("on_jobs"),
            label="Run on",
            allow_custom_value=True,
            info="this Space, or Hugging Face Jobs hardware in your own account (billed to you; sign in first)",
            elem_id="on-jobs",
        ),
        "more_sources": lambda: gr.Textbox(
            value=default("more_sources"),
            label="More sources (a batch, one Job each)",
            lines=3,
            placeholder="namespace/name [target-name], one a line",
            info=f"on Hugging Face Jobs only; at most {settings.get('QUANTIZER_MAX_BATCH')} sources in all",
            elem_id="more-sources",
        ),
    }


def api_handler(run: Callable[..., typing.Iterator], name: str = "quantize") -> Callable[..., typing.Iterator]:
    """A generator function whose signature is the form's fields (then the sign-in token and the progress bar),
    calling `run(values, oauth_token, progress, request)`. Gradio reads the signature for the API's parameter names and
    defaults, and calls it with the inputs in the form's order."""

    def handler(*args):
        named = dict(zip([*NAMES, "oauth_token", "progress", "request"], args, strict=False))
        oauth_token, progress, request = (named.pop(k, None) for k in ("oauth_token", "progress", "request"))
        values = {k: v for k, v in named.items() if v is not None or k == "source"}
        yield from run(FormValues(**values), oauth_token, progress, request)

    hints = typing.get_type_hints(FormValues)
    parameters = [
        inspect.Parameter(
            n,
            POSITIONAL,
            default=inspect.Parameter.empty if n == "source" else default(n),
            annotation=hints[n],
        )
        for n in NAMES
    ]
    parameters += [
        inspect.Parameter(
            "oauth_token", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.OAuthToken | None
        ),
        inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()),
    ]
    handler.__signature__ = inspect.Signature(parameters)
    handler.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not inspect.Parameter.empty}
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = run.__doc__
    return handler
