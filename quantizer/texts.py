"""The texts every job measures and calibrates on, and the fixed token batches cut from them.

A leaf module: verification, int4 calibration, the pipeline and the benchmarks all read it. All the
built-in texts are real English that ships with Python and the packages requirements.txt pins
(`SOURCES`): Python's pydoc topics (the language reference; Python 3.11.7's, shipped in `data/`), the
packages' descriptions (product and technical prose by many authors), their license texts (legal prose)
and the ChatterBot dialog corpus (conversation). GPTQ calibrates on the descriptions, licenses and
dialog mixed, and jobs are measured on the pydoc topics, a domain calibration never saw: a card's int4
figure is on held-out text, not on text like what the values were tuned on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from .bounds import within
from .errors import InputError, SourceError

DEFAULT_EVAL_TOKENS = 2048
WINDOW = 256  # perplexity window length, tokens
LOGITS_BATCH = (4, 64)  # sequences x tokens for the logits comparison
SAMPLE_PROMPT = "What is the capital of France? Answer in one sentence."
SAMPLE_TOKENS = 24
# a chat template frames a one-line question in milliseconds and a few hundred characters
TEMPLATE_SECONDS = 10.0
TEMPLATE_CHARS = 100_000
TOKENIZE_SECONDS = 120.0  # SmolLM2's tokenizer takes 0.25-0.3 s for the built-in texts (0.5 MB each) on 2 cores
DEFAULT_CALIBRATION_TOKENS = 16384
CALIBRATION_SEQ_LEN = 256
MIX_CHUNK = 2000  # characters each source gives in turn to a mixed text


# Python 3.11.7's pydoc topics, every topic in name order (see data/README.md): each patch release of Python edits
# them, so reading the running Python's copy made the committed figures depend on the interpreter's patch version
PYDOC_TOPICS = Path(__file__).resolve().parent / "data" / "pydoc-topics-3.11.7.txt"
PYDOC_TOPICS_SHA256 = "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee"


def pydoc_topics() -> str:
    """Python's language reference as the standard library ships it for `help()`: the pydoc topics, Python 3.11.7's
    copy shipped with the project, so every machine measures on the same text."""
    with open(PYDOC_TOPICS, encoding="utf-8", newline="") as f:
        return f.read()


def stdlib_pydoc_topics() -> str:
    """The running Python's own pydoc topics, joined the same way (what `PYDOC_TOPICS` was written from)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


# the packages whose texts calibrate, all pinned by requirements.txt, so the text is the same wherever the project
# is installed (a Space, a duplicate, the command line), whatever else is there
CALIBRATION_PACKAGES = (
    "accelerate",
    "gguf",
    "gradio",
    "gradio_client",
    "huggingface_hub",
    "jinja2",
    "psutil",
    "safetensors",
    "spaces",
    "torch",
    "torchao",
    "trackio",
    "transformers",
)


def _distributions() -> list:
    found = []
    for name in CALIBRATION_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(metadata.distribution(name))
    return found


def package_descriptions() -> str:
    """The long descriptions (README texts) of the packages this project pins, in name order."""
    bodies = [d.metadata.get_payload() or "" for d in _distributions()]
    return "\n\n".join(dict.fromkeys(b.strip() for b in bodies if len(b) > 500))


def license_texts() -> str:
    """The license files the packages this project pins ship (torch's name its third-party parts), each distinct
    text once, in name order."""
    texts = []
    for dist in _distributions():
        for file in dist.files or []:
            if file.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    texts.append(file.read_text(encoding="utf-8").strip())
    return "\n\n".join(dict.fromkeys(t for t in texts if len(t) > 200))


# the ChatterBot corpus's English categories, but its Python code answers: Python is the evaluation text's domain
DIALOG_PACKAGE = "chatterbot_corpus"
DIALOG_SKIPPED = ("coding.yml",)


def dialog_corpus() -> str:
    """The English conversations of the ChatterBot dialog corpus (a pinned data package, BSD-3-Clause): one
    utterance a line, a blank line between conversations, categories in name order."""
    import importlib.resources

    import yaml

    folder = importlib.resources.files(DIALOG_PACKAGE) / "data" / "english"
    conversations = []
    for file in sorted(folder.iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".yml") or file.name in DIALOG_SKIPPED:
            continue
        for turns in yaml.safe_load(file.read_text(encoding="utf-8")).get("conversations") or []:
            conversations.append("\n".join(str(turn).strip() for turn in turns))
    return "\n\n".join(conversations)


@dataclass(frozen=True)
class TextSource:
    name: str
    domain: str
    read: Callable[[], str]


SOURCES = {
    s.name: s
    for s in (
        TextSource("pydoc", "Python's pydoc topics (the language reference)", pydoc_topics),
        TextSource("packages", "descriptions of the Python packages this project pins", package_descriptions),
        TextSource("licenses", "license texts of the Python packages this project pins", license_texts),
        TextSource("dialog", "the ChatterBot English dialog corpus (conversations)", dialog_corpus),
    )
}
EVAL_SOURCE = "pydoc"
CALIBRATION_SOURCES = ("packages", "licenses", "dialog")  # never the evaluation text's domain


def mixed(names: tuple[str, ...]) -> str:
    """The named sources in turn, MIX_CHUNK characters each, so any prefix holds every domain."""
    texts = [SOURCES[name].read() for name in names]
    chunks = []
    for start in range(0, max(len(t) for t in texts), MIX_CHUNK):
        chunks.extend(t[start : start + MIX_CHUNK] for t in texts if start < len(t))
    return "".join(chunks)


def mix_name(names: tuple[str, ...]) -> str:
    return " and ".join(SOURCES[name].domain for name in names)


DEFAULT_EVAL_TEXT_NAME = f"{SOURCES[EVAL_SOURCE].domain}, a domain the calibration text does not cover"
DEFAULT_CALIBRATION_TEXT_NAME = (
    "the descriptions and license texts of the Python packages this project pins and the ChatterBot English dialog "
    "corpus, mixed (no Python documentation)"
)


def default_eval_text() -> str:
    """Real English that ships with Python, of a domain the default calibration text does not cover."""
    return SOURCES[EVAL_SOURCE].read()


def default_calibration_text() -> str:
    """Broad English from the pinned packages: product and technical prose, legal prose and dialog, mixed."""
    return mixed(CALIBRATION_SOURCES)


@dataclass(frozen=True)
class EvalData:
    """The fixed inputs every model of a job is measured on."""

    windows: torch.Tensor  # [n, WINDOW] token ids for perplexity
    batch: torch.Tensor  # LOGITS_BATCH token ids for the logits comparison (disjoint from windows)
    prompt_ids: torch.Tensor  # [1, n] the sample prompt, chat template applied when there is one

    @property
    def eval_tokens(self) -> int:
        return self.windows.numel()


def token_ids(tokenizer, text: str, *, special_tokens: bool = False) -> torch.Tensor:
    """`text` through the source's tokenizer (a stranger's rules and regexes), bounded in time."""
    return within(
        TOKENIZE_SECONDS,
        "the source's tokenizer",
        lambda: tokenizer(text, add_special_tokens=special_tokens, return_tensors="pt")["input_ids"][0],
    )


def build_eval_data(tokenizer, text: str, eval_tokens: int = DEFAULT_EVAL_TOKENS) -> EvalData:
    ids = token_ids(tokenizer, text)
    n_windows = max(1, eval_tokens // WINDOW)
    rows, cols = LOGITS_BATCH
    needed = n_windows * WINDOW + rows * cols
    if ids.numel() < needed:
        raise InputError(
            f"the evaluation text has {ids.numel()} tokens; at least {needed} are needed: give a longer --eval-text."
        )
    windows = ids[: n_windows * WINDOW].reshape(n_windows, WINDOW)
    batch = ids[n_windows * WINDOW : needed].reshape(rows, cols)
    return EvalData(windows, batch, prompt_ids(tokenizer))


def prompt_ids(tokenizer) -> torch.Tensor:
    """The sample question as the model's chat template frames it. The template is the source's (a stranger's code,
    run in Jinja's sandbox): its rendering is bounded in time and its output in size."""
    if tokenizer.chat_template:
        text = within(
            TEMPLATE_SECONDS,
            "the source's chat template",
            lambda: tokenizer.apply_chat_template(
                [{"role": "user", "content": SAMPLE_PROMPT}], tokenize=False, add_generation_prompt=True
            ),
        )
        if not isinstance(text, str) or len(text) > TEMPLATE_CHARS:
            raise SourceError(
                f"the source's chat template turns a one-line question into {len(text):,} characters (at most "
                f"{TEMPLATE_CHARS:,} here): fix the template."
            )
        return token_ids(tokenizer, text).unsqueeze(0)
    return token_ids(tokenizer, SAMPLE_PROMPT, special_tokens=True).unsqueeze(0)


def calibration_ids(
    tokenizer, text: str, n_tokens: int = DEFAULT_CALIBRATION_TOKENS, seq_len: int = CALIBRATION_SEQ_LEN
) -> torch.Tensor:
    """Calibration token ids as [rows, seq_len]."""
    ids = token_ids(tokenizer, text)
    rows = max(1, min(n_tokens, ids.numel()) // seq_len)
    return ids[: rows * seq_len].reshape(rows, seq_len)
