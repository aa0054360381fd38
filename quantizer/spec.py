"""What a job is asked to do: the one `JobSpec` that the CLI's flags and the Space's form both fill in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import settings
from .naming import split_repo_id
from .recipes import DEFAULT_TYPE
from .texts import DEFAULT_CALIBRATION_TOKENS, DEFAULT_EVAL_TOKENS

DEFAULT_OUTPUT_DIR = Path("out")


def host_deadline_seconds() -> float | None:
    """The host's limit on a job's run time (QUANTIZER_JOB_TIMEOUT seconds), for the CLI and the Space alike."""
    return settings.get("QUANTIZER_JOB_TIMEOUT")


# what `--eval-dataset` alone names: the set torchao's published perplexity tables use
WIKITEXT = "Salesforce/wikitext:wikitext-2-raw-v1"


@dataclass(frozen=True, kw_only=True)
class DatasetRef:
    """Text from a Hub dataset: `repo_id`, its `config` (None: the default one), a split and a column."""

    repo_id: str
    config: str | None = None
    split: str
    column: str = "text"

    @classmethod
    def parse(cls, value: str, split: str, column: str) -> DatasetRef:
        """`namespace/name` or `namespace/name:config`."""
        repo_id, _, config = value.partition(":")
        return cls(repo_id=repo_id, config=config or None, split=split, column=column)

    @property
    def name(self) -> str:
        config = f"{self.config}, " if self.config else ""
        return f"{self.repo_id} ({config}{self.split} split, column '{self.column}')"


@dataclass(kw_only=True)
class JobSpec:
    """Everything a job needs to know; the CLI's flags and the UI's form both map onto this."""

    source: str
    target: str | None = None  # namespace/name or name; None: the naming rule
    namespace: str | None = None  # where a push goes when `target` names none; None: the token's owner
    quant_types: list[str] = field(default_factory=lambda: [DEFAULT_TYPE])
    group_size: int | None = None  # None: the default, adjusted automatically to fit the model
    device: str = "auto"
    save_only: bool = False
    output_dir: Path | None = None  # save-only: default ./out; a push keeps a local copy only when given
    overwrite: bool = False
    token: str | None = None
    private: bool | None = None  # None: private when the source is private or gated, else public
    eval_text: Path | None = None
    eval_dataset: DatasetRef | None = None  # instead of eval_text
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    debug: bool = False  # re-raise unexpected errors instead of recording them
    int4_method: str | None = None  # a name from int4.METHODS or int4.ABLATIONS; None: the best that fits the budget
    int4_mixed: float | None = None  # mixed precision: average bits per Linear weight (int4.mixed); None: all int4
    calibration_text: Path | None = None  # for calibrated methods; default: texts.default_calibration_text()
    calibration_dataset: DatasetRef | None = None  # instead of calibration_text
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    streaming: bool | None = None  # shard-by-shard engine; None: when the model does not fit in memory
    allow_partial: bool = False  # go on when less than half of the Linear-like weights can be quantized
    speed_only: bool = False  # timing runs on random weights (save-only): the quality floors reported, not enforced
    track: bool = True  # record each type as a Trackio run
    trackio_project: str | None = None  # default: $QUANTIZER_TRACKIO_PROJECT or "quantizer"
    # a shared deployment (a public Space) serving visitors: Hub sources only, a signed-in visitor for every job
    public: bool = False
    max_source_bytes: int | None = None  # a host's cap on the source's weights
    deadline_seconds: float | None = None  # the job is stopped when it runs longer, in whatever stage

    @property
    def push(self) -> bool:
        return not self.save_only

    @property
    def local_dir(self) -> Path | None:
        """Where outputs are kept on this machine, if anywhere."""
        return Path(self.output_dir) if self.output_dir else (None if self.push else DEFAULT_OUTPUT_DIR)

    def local_folder(self, target: str) -> Path:
        """The folder an output named `target` is kept in (only when `local_dir` is set)."""
        assert self.local_dir is not None
        return self.local_dir / split_repo_id(target)[1]
