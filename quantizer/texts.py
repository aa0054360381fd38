"""The texts every job measures and calibrates on, and the fixed token batches cut from them.

A leaf module: verification, int4 calibration, the pipeline and the benchmarks all read it. The
default evaluation text is Python's pydoc topics (real English prose that ships with Python); GPTQ
calibrates on its second half, which evaluation never reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError

DEFAULT_EVAL_TOKENS = 2048
WINDOW = 256  # perplexity window length, tokens
LOGITS_BATCH = (4, 64)  # sequences x tokens for the logits comparison
SAMPLE_PROMPT = "What is the capital of France? Answer in one sentence."
SAMPLE_TOKENS = 24
DEFAULT_EVAL_TEXT_NAME = "Python's pydoc topics"
DEFAULT_CALIBRATION_TOKENS = 16384
CALIBRATION_SEQ_LEN = 256
DEFAULT_CALIBRATION_TEXT_NAME = "the second half of Python's pydoc topics (disjoint from the evaluation text)"


def default_eval_text() -> str:
    """Real English prose that ships with Python: the standard library's pydoc topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def default_calibration_text() -> str:
    """The second half of Python's pydoc topics: real English, disjoint from the evaluation text (the first
    tokens of the same document, a few thousand at most)."""
    text = default_eval_text()
    return text[len(text) // 2 :]


@dataclass(frozen=True)
class EvalData:
    """The fixed inputs every model of a job is measured on."""

    windows: torch.Tensor  # [n, WINDOW] token ids for perplexity
    batch: torch.Tensor  # LOGITS_BATCH token ids for the logits comparison (disjoint from windows)
    prompt_ids: torch.Tensor  # [1, n] the sample prompt, chat template applied when there is one

    @property
    def eval_tokens(self) -> int:
        return self.windows.numel()


def build_eval_data(tokenizer, text: str, eval_tokens: int = DEFAULT_EVAL_TOKENS) -> EvalData:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
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
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": SAMPLE_PROMPT}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(SAMPLE_PROMPT, return_tensors="pt")["input_ids"]


def calibration_ids(
    tokenizer, text: str, n_tokens: int = DEFAULT_CALIBRATION_TOKENS, seq_len: int = CALIBRATION_SEQ_LEN
) -> torch.Tensor:
    """Calibration token ids as [rows, seq_len]."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    rows = max(1, min(n_tokens, ids.numel()) // seq_len)
    return ids[: rows * seq_len].reshape(rows, seq_len)
