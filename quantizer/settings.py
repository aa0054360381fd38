"""Every environment variable the library and the Space read, in one place, with its default and meaning.

The rest of the code asks `settings.get(NAME)`; nothing else reads `os.environ`. The README's table of settings is
`markdown_table()` (tests/test_docs.py checks it), so a new setting cannot go undocumented.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import tables


@dataclass(frozen=True, kw_only=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any = None  # the value when unset (None: unset means "not limited" or is computed where it is used)
    default_text: str = ""  # the default as the README says it, where it is computed rather than fixed
    means: str
    space: bool = False  # a host's setting for the Space (ui/), rather than the library's

    def value(self) -> Any:
        raw = os.environ.get(self.name, "").strip()
        return self.parse(raw) if raw else self.default

    @property
    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        return (
            "unset"
            if self.default is None
            else f"`{self.default:g}`"
            if isinstance(self.default, float)
            else f"`{self.default}`"
        )


def _bytes(raw: str) -> int:
    return int(float(raw))


def _flag(raw: str) -> bool:
    return raw == "1"


def _lower(raw: str) -> str:
    return raw.lower()


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            name="HF_TOKEN",
            parse=str,
            means="the Hub token when `--token` is not given (never used by a shared Space, whose visitors sign in)",
        ),
        Setting(
            name="QUANTIZER_JOB_TIMEOUT",
            parse=float,
            default_text="unset (CLI); the GPTQ budget plus ten minutes on a shared deployment, one slot on ZeroGPU",
            means="seconds a job may run before it is stopped and nothing is kept",
        ),
        Setting(
            name="QUANTIZER_GPTQ_BUDGET",
            parse=float,
            default=15 * 60.0,
            means="seconds GPTQ may take, as "
            "estimated on this machine, before the automatic int4 method falls back to asym",
        ),
        Setting(
            name="QUANTIZER_MEMORY_LIMIT",
            parse=_bytes,
            means="bytes of memory the job counts as free at "
            "most (a machine shared with other work); below the model's size the job streams",
        ),
        Setting(
            name="QUANTIZER_COMPUTE_DTYPE",
            parse=_lower,
            default="",
            default_text="probe",
            means="`float32` or `source`: the dtype CPU forward passes run in, instead of the probe's choice",
        ),
        Setting(
            name="QUANTIZER_CACHE",
            parse=str,
            default_text="`~/.cache/torchao-quantizer`",
            means="where `make demo` keeps the bundled model converted to safetensors",
        ),
        Setting(
            name="QUANTIZER_TRACKIO_PROJECT",
            parse=str,
            default="quantizer",
            means="the Trackio project runs are recorded in, when `--trackio-project` is not given",
        ),
        Setting(
            name="TRACKIO_SPACE_ID",
            parse=str,
            means="a Trackio Space the runs sync to (private there, never naming a private repo)",
        ),
        Setting(
            name="QUANTIZER_HUB_ATTEMPTS",
            parse=int,
            default=4,
            means="tries of a Hub call that failed for a transient reason",
        ),
        Setting(
            name="QUANTIZER_HUB_BACKOFF",
            parse=float,
            default=1.0,
            means="seconds before the first retry of a Hub call; doubled each time",
        ),
        Setting(
            name="QUANTIZER_JOBS_IMAGE",
            parse=str,
            default_text="`hf.co/spaces/$SPACE_ID` on a Space, else unset",
            means="the Docker image a Hugging Face Job runs (`--on-jobs`): one that holds this tool",
        ),
        Setting(
            name="QUANTIZER_MAX_BATCH",
            parse=int,
            default=10,
            space=True,
            means="the most sources one batch from the Space may hold (the CLI has no cap)",
        ),
        Setting(
            name="SPACE_ID",
            parse=str,
            space=True,
            means="set by the Hub on a Space: the app serves strangers (signed-in visitors only, Hub sources only)",
        ),
        Setting(
            name="QUANTIZER_PUBLIC",
            parse=_flag,
            default=False,
            default_text="unset",
            space=True,
            means="`1`: treat any other host as a shared Space",
        ),
        Setting(
            name="QUANTIZER_ZEROGPU_SECONDS",
            parse=int,
            default=300,
            space=True,
            means="the ZeroGPU slot a job asks for; its deadline is the slot less a margin",
        ),
        Setting(
            name="QUANTIZER_MAX_SOURCE_BYTES",
            parse=_bytes,
            space=True,
            default_text="a quarter of the jobs' disk, at most four times the memory (shared); unlimited (private)",
            means="the largest source's weights a deployment takes",
        ),
        Setting(
            name="QUANTIZER_JOB_MEMORY",
            parse=_bytes,
            space=True,
            default_text="90% of the machine's memory",
            means="bytes a job's process may hold before the app stops it",
        ),
        Setting(
            name="QUANTIZER_OUTPUT_ROOT",
            parse=str,
            default="out/space",
            space=True,
            means='where "save on the Space only" keeps outputs (private deployments)',
        ),
        Setting(
            name="QUANTIZER_OUTPUT_TTL",
            parse=float,
            default=3600.0,
            space=True,
            means="seconds a save-only archive stays downloadable",
        ),
        Setting(
            name="QUANTIZER_DISK_QUOTA",
            parse=_bytes,
            default=20 * 10**9,
            default_text="`20000000000` (20 GB)",
            space=True,
            means="bytes the archives may take; the oldest go first",
        ),
        Setting(
            name="QUANTIZER_CONCURRENCY",
            parse=int,
            default=16,
            space=True,
            means="event handlers at once (one job runs at a time whatever this says)",
        ),
        Setting(
            name="QUANTIZER_MAX_QUEUE",
            parse=int,
            default=8,
            space=True,
            means="requests waiting in Gradio's queue before new ones are refused",
        ),
        Setting(
            name="GRADIO_SERVER_NAME",
            parse=str,
            default="127.0.0.1",
            space=True,
            means="the address the app listens on",
        ),
        Setting(name="GRADIO_SERVER_PORT", parse=int, default=7860, space=True, means="the port it listens on"),
    )
}
OAUTH_VARIABLES = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OPENID_PROVIDER_URL")  # set by the Hub for hf_oauth
FORCED_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")  # torch's own; results name them when set


def get(name: str) -> Any:
    """The setting's value from the environment, parsed, or its default."""
    return SETTINGS[name].value()


def default(name: str) -> Any:
    """The setting's value when it is unset."""
    return SETTINGS[name].default


def present(names: tuple[str, ...]) -> dict[str, str]:
    """The variables of `names` that are set (other programs' settings, read but not owned here)."""
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def skip_torchao_extensions() -> None:
    """torchao's C++ extensions are built for other torch versions; loading them only warns, so skip them."""
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")


def markdown_table() -> str:
    """The README's table of settings."""
    rows = [
        (f"`{s.name}`", "Space" if s.space else "CLI and Space", s.shown_default, s.means) for s in SETTINGS.values()
    ]
    return tables.markdown_table(("variable", "where", "default", "what it sets"), rows)
