"""The texts of one job: what it is evaluated on and what a calibrated int4 method is tuned on.

Each comes from the built-in sources (`texts`), a UTF-8 file, or a Hub dataset read with the
`datasets` library (`--eval-dataset`, `--calibration-dataset`): a named split and column, joined
row by row until there is enough for the job's token count. Datasets are read during preflight,
before any model weight is downloaded, into the job's own folder (removed with it), so a bad name,
split or column is refused before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .naming import split_repo_id
from .spec import DatasetRef, JobSpec
from .texts import (
    DEFAULT_CALIBRATION_TEXT_NAME,
    DEFAULT_EVAL_TEXT_NAME,
    LOGITS_BATCH,
    default_calibration_text,
    default_eval_text,
)

CHARS_PER_TOKEN = 8  # generous: English runs at about 4 characters a token; the rest is kept in reserve


@dataclass(frozen=True, kw_only=True)
class JobTexts:
    eval_text: str
    eval_name: str
    calibration_text: str | None  # None: no calibrated method in this job
    calibration_name: str | None


def dataset_text(ref: DatasetRef, token: str | None, cache_dir: Path, tokens: int) -> str:
    """The rows of `ref`'s column, in order, joined until about `tokens` tokens of text."""
    import datasets  # only jobs that name a dataset pay for importing it (pyarrow, pandas)

    split_repo_id(ref.repo_id)  # a clear message for a malformed id
    try:
        rows = datasets.load_dataset(
            ref.repo_id, ref.config, split=ref.split, token=token, cache_dir=str(cache_dir), streaming=False
        )
    except datasets.exceptions.DatasetNotFoundError:
        raise InputError(
            f"dataset {ref.repo_id} was not found on the Hub; if it is private or gated, pass a token that can read it."
        ) from None
    except (ValueError, KeyError) as exc:  # an unknown config or split
        raise InputError(f"dataset {ref.name}: {exc}") from None
    if ref.column not in rows.column_names:
        raise InputError(
            f"dataset {ref.repo_id} has no column '{ref.column}' (its columns: {', '.join(rows.column_names)}): "
            "choose one with --eval-column or --calibration-column."
        )
    budget, pieces, size = tokens * CHARS_PER_TOKEN, [], 0
    for value in rows[ref.column]:
        if not isinstance(value, str) or not value.strip():
            continue
        piece = value if value.endswith("\n") else value + "\n\n"
        pieces.append(piece)
        size += len(piece)
        if size >= budget:
            break
    if not pieces:
        raise InputError(f"dataset {ref.name} has no text in column '{ref.column}'.")
    return "".join(pieces)


def chosen_text(
    dataset: DatasetRef | None,
    file: Path | None,
    default: Callable[[], str],
    default_name: str,
    *,
    spec: JobSpec,
    workdir: Path,
    tokens: int,
) -> tuple[str, str]:
    """One of a job's texts and its name: the dataset's rows, else the file's text, else the built-in text."""
    if dataset:
        return dataset_text(dataset, spec.token, workdir / "datasets", tokens), dataset.name
    if file:
        return Path(file).read_text(encoding="utf-8"), Path(file).name
    return default(), default_name


def job_texts(spec: JobSpec, workdir: Path, calibrated: bool) -> JobTexts:
    """The job's evaluation text and, for a calibrated method, its calibration text, each with its name."""
    rows, cols = LOGITS_BATCH
    eval_text, eval_name = chosen_text(
        spec.eval_dataset,
        spec.eval_text,
        default_eval_text,
        DEFAULT_EVAL_TEXT_NAME,
        spec=spec,
        workdir=workdir,
        tokens=spec.eval_tokens + rows * cols,
    )
    calibration_text = calibration_name = None
    if calibrated:
        calibration_text, calibration_name = chosen_text(
            spec.calibration_dataset,
            spec.calibration_text,
            default_calibration_text,
            DEFAULT_CALIBRATION_TEXT_NAME,
            spec=spec,
            workdir=workdir,
            tokens=spec.calibration_tokens,
        )
    return JobTexts(
        eval_text=eval_text,
        eval_name=eval_name,
        calibration_text=calibration_text,
        calibration_name=calibration_name,
    )
