"""A job on Hugging Face Jobs: the same CLI job, run in a Job on hardware the user picks and pays for.

Built on huggingface_hub's Jobs API (`run_job`, `fetch_job_logs`, `inspect_job`, `cancel_job`, `list_jobs_hardware`),
nothing of our own: the Job runs `python -m quantizer` with the job's flags in a Docker image that holds this tool
(this Space's own image, `hf.co/spaces/OWNER/NAME`). The token reaches the Job as the secret HF_TOKEN, never as an
argument; the Job's log streams back line by line, and its last line is the job's report (`REPORT_MARKER`), which
comes back as the `Report` a local job returns. Every Job goes with a deadline: the Job's `timeout`, and the same
deadline minus a margin for the job inside it, so that the job stops itself and cleans up before the Job is killed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import measured, recipes
from .errors import InputError, QuantizerError
from .hub import Hub, endpoint
from .report import Report
from .source import parse_repo_ref
from .spec import JobSpec
from .tables import markdown_table

TOOL = "torchao-quantizer"  # the `tool` label of every Job this tool starts
REPORT_MARKER = "QUANTIZER_REPORT "  # the Job's last stdout line: this, then the report as one line of JSON
TIMEOUT_FLOOR_SECONDS = 30 * 60  # Jobs' own default timeout; a shorter one leaves no room for a slow download
TIMEOUT_FACTOR = 4  # the deadline is this many times the estimate, at least the floor
STOP_MARGIN_SECONDS = 60  # the job inside stops itself this long before the Job's timeout kills it
DEFAULT_ENDPOINT = "https://huggingface.co"
LABEL_VALUE = re.compile(r"[^a-zA-Z0-9._-]")


@dataclass(frozen=True, kw_only=True)
class Flavor:
    """One kind of Jobs hardware, with its price, as `list_jobs_hardware` gives it."""

    name: str
    pretty_name: str
    cpu: str
    ram: str
    storage: str
    accelerator: str | None  # e.g. "1x H200 (141 GB)"; None on a CPU flavor
    usd_per_hour: float

    @property
    def device(self) -> str:
        return "cuda" if self.accelerator else "cpu"

    @classmethod
    def from_info(cls, info) -> Flavor:
        per_unit = {"minute": 60, "hour": 1, "second": 3600}.get(str(info.unit_label).lower(), 60)
        accelerator = info.accelerator
        return cls(
            name=info.name,
            pretty_name=info.pretty_name,
            cpu=info.cpu,
            ram=info.ram,
            storage=info.ephemeral_storage,
            accelerator=f"{accelerator.quantity}x {accelerator.model} ({accelerator.vram})" if accelerator else None,
            usd_per_hour=info.unit_cost_usd * per_unit,
        )

    def describe(self) -> str:
        hardware = ", ".join(x for x in (self.accelerator, f"{self.cpu}", f"{self.ram} RAM") if x)
        return f"{self.name} ({hardware}): ${self.usd_per_hour:.2f}/hour"


def flavors(hub: Hub) -> list[Flavor]:
    infos = hub.call("listing the Jobs hardware", lambda: hub.api.list_jobs_hardware())
    return [Flavor.from_info(info) for info in infos]


def flavors_table(hub: Hub) -> str:
    """The Jobs hardware and its prices, as `--list-jobs-hardware` prints them."""
    rows = [[f.name, f.pretty_name, f.accelerator or "-", f.cpu, f.ram, f"${f.usd_per_hour:.2f}"] for f in flavors(hub)]
    return markdown_table(["flavor", "name", "GPU", "CPU", "RAM", "per hour"], rows)


def flavor_named(hub: Hub, name: str) -> Flavor:
    known = flavors(hub)
    found = next((f for f in known if f.name == name), None)
    if found is None:
        raise InputError(f"no Jobs hardware named {name!r}; choose one of: {', '.join(f.name for f in known)}.")
    return found


@dataclass(frozen=True, kw_only=True)
class CostEstimate:
    """What a job should cost on a flavor: its time from `make bench`'s measured job times, scaled by the source's
    size, billed by the started minute as Jobs bills."""

    flavor: Flavor
    seconds: float
    usd: float
    basis: str

    def text(self) -> str:
        minutes = math.ceil(self.seconds / 60)
        return f"{self.flavor.describe()}; about {minutes} min, about ${self.usd:.4f} (an estimate: {self.basis})"


def estimate(flavor: Flavor, source_bytes: int, quant_types: list[str]) -> CostEstimate:
    """The job's time and cost on `flavor`: each type's measured job time (`make bench`, on the committed CPU or
    GPU table) times the source's size over the measured model's. A CPU flavor's figure comes from 2 cores, so on
    a larger flavor it is an upper bound; a GPU flavor's comes from an H200, so a smaller GPU may take longer."""
    rows = measured.bench_rows(flavor.device) or measured.bench_rows("cpu")
    if not rows:
        raise InputError("no measured job times to estimate from (benchmarks/results is missing).")
    source, by_type = rows[0], {row["name"]: row for row in rows[1:]}
    slowest = max(row["quantize_seconds"] for row in by_type.values())
    measured_seconds = sum(by_type.get(t, {}).get("quantize_seconds", slowest) for t in quant_types)
    seconds = measured_seconds * source_bytes / source["bytes"]
    usd = math.ceil(seconds / 60) * flavor.usd_per_hour / 60
    table = measured.BENCH_TABLES.get(flavor.device, measured.BENCH_TABLES["cpu"])
    return CostEstimate(
        flavor=flavor,
        seconds=seconds,
        usd=usd,
        basis=f"make bench's job times ({table}), scaled from {source['bytes'] / 1e9:.2f} GB to "
        f"{source_bytes / 1e9:.2f} GB, billed per started minute",
    )


def timeout_seconds(estimated: CostEstimate, asked: int | None) -> int:
    """The Job's deadline: the user's, else a few times the estimate, never less than Jobs' default."""
    if asked:
        if asked <= STOP_MARGIN_SECONDS:
            raise InputError(f"--jobs-timeout must be more than {STOP_MARGIN_SECONDS} s (the job's clean-up margin).")
        return asked
    return max(TIMEOUT_FLOOR_SECONDS, math.ceil(TIMEOUT_FACTOR * estimated.seconds / 60) * 60)


def job_argv(spec: JobSpec) -> list[str]:
    """The CLI flags that make `spec` again inside the Job. What exists only on this machine (a folder, a text
    file) is refused here, before anything is submitted, with what to use instead."""
    if spec.save_only:
        raise InputError("--save-only keeps the output on the Job's disk, which is gone when it ends: push instead.")
    refusals = {
        "eval_text": "--eval-text is a file on this machine, which a Job cannot read: use --eval-dataset",
        "calibration_text": "--calibration-text is a file on this machine, which a Job cannot read: use "
        "--calibration-dataset",
        "output_dir": "--output-dir is a folder on the Job's disk, which is gone when the Job ends: leave it out",
    }
    for field, message in refusals.items():
        if getattr(spec, field):
            raise InputError(message + ".")
    if parse_repo_ref(spec.source) is None or Path(spec.source).expanduser().exists():
        raise InputError(
            f"{spec.source!r} is not a Hub repo id: a Job reads its source from the Hub (namespace/name[@revision]); "
            "upload a local model first."
        )
    if spec.token is None:
        raise InputError("a Job needs a Hub token (--token or HF_TOKEN): it runs and is billed in your account.")
    argv = [spec.source, *([spec.target] if spec.target else [])]
    for quant_type in spec.quant_types:
        argv += ["--quant-type", quant_type]
    options = {
        "--group-size": spec.group_size,
        "--int4-method": spec.int4_method,
        "--int4-mixed": spec.int4_mixed,
        "--trackio-project": spec.trackio_project,
    }
    argv += [item for flag, value in options.items() if value is not None for item in (flag, str(value))]
    if spec.device != "auto":
        argv += ["--device", spec.device]
    for role, ref in (("eval", spec.eval_dataset), ("calibration", spec.calibration_dataset)):
        if ref is not None:
            config = f":{ref.config}" if ref.config else ""
            argv += [f"--{role}-dataset", f"{ref.repo_id}{config}", f"--{role}-split", ref.split]
            argv += [f"--{role}-column", ref.column]
    argv += ["--eval-tokens", str(spec.eval_tokens), "--calibration-tokens", str(spec.calibration_tokens)]
    flags = {
        "--private": spec.private,
        "--overwrite": spec.overwrite,
        "--allow-partial": spec.allow_partial,
        "--no-tracking": True,  # a Job's disk is gone when it ends: the report comes back and is recorded here
    }
    argv += [flag for flag, on in flags.items() if on]
    if spec.streaming is not None:
        argv.append("--streaming" if spec.streaming else "--no-streaming")
    return argv


def type_names(spec: JobSpec) -> list[str]:
    return [recipe.name for recipe in recipes.resolve(spec.quant_types)]


def labels(spec: JobSpec) -> dict[str, str]:
    """What `hf jobs ps` shows of the Job: the tool, the source and the types (values as Jobs accepts them)."""
    return {
        "tool": TOOL,
        "source": LABEL_VALUE.sub("-", spec.source),
        "types": LABEL_VALUE.sub("-", ".".join(type_names(spec))),
    }


@dataclass(frozen=True, kw_only=True)
class Submitted:
    job_id: str
    url: str
    namespace: str
    timeout_seconds: int


def submit(hub: Hub, spec: JobSpec, flavor: Flavor, *, image: str, timeout: int, namespace: str) -> Submitted:
    """Start the Job. The token goes as a secret; the job's own deadline is the Job's timeout minus a margin."""
    environment = {"PYTHONUNBUFFERED": "1", "QUANTIZER_JOB_TIMEOUT": str(timeout - STOP_MARGIN_SECONDS)}
    if endpoint().rstrip("/") != DEFAULT_ENDPOINT:  # a Hub other than huggingface.co (an enterprise or a test Hub)
        environment["HF_ENDPOINT"] = endpoint()
    command = ["python", "-m", "quantizer", *job_argv(spec), "--report-to-log"]
    try:  # once: a retry after a lost answer could start a second Job, billed twice
        info = hub.api.run_job(
            image=image,
            command=command,
            env=environment,
            secrets={"HF_TOKEN": spec.token},
            flavor=flavor.name,
            timeout=timeout,
            labels=labels(spec),
            namespace=namespace,
        )
    except Exception as exc:
        raise hub.translate(exc, "starting the Job", None, 1) from exc
    return Submitted(job_id=info.id, url=info.url, namespace=namespace, timeout_seconds=timeout)


@dataclass(frozen=True, kw_only=True)
class RemoteOutcome:
    """How a Job ended: its stage (COMPLETED, ERROR, CANCELED...), the report its job printed, and why not."""

    job: Submitted
    stage: str
    report: Report | None
    message: str | None = None


def report_line(report: Report) -> str:
    """The Job's last line: the report, as one line of JSON after the marker."""
    return REPORT_MARKER + json.dumps(report.to_dict(), separators=(",", ":"))


def log_lines(hub: Hub, job: Submitted) -> Iterator[str | Report]:
    """The Job's log as it is written, each line scrubbed of the token, and its report where the job printed it."""
    for line in hub.api.fetch_job_logs(job_id=job.job_id, namespace=job.namespace, follow=True):
        if line.startswith(REPORT_MARKER):
            yield Report.from_dict(json.loads(line.removeprefix(REPORT_MARKER)))
        else:
            yield hub.events.scrub(line)


def ended(hub: Hub, job: Submitted, report: Report | None) -> RemoteOutcome:
    info = wait_until_ended(hub, job)
    return RemoteOutcome(job=job, stage=str(info.status.stage), report=report, message=info.status.message)


def wait_until_ended(hub: Hub, job: Submitted, seconds: float = 60.0):
    """The Job's info once it is in a final stage (the log can end a moment before the stage changes); after
    `seconds`, as it is then."""

    def final_or_current():
        try:
            return hub.api.wait_for_job(job.job_id, namespace=job.namespace, timeout=seconds, poll_interval=0.5)
        except TimeoutError:
            return hub.api.inspect_job(job_id=job.job_id, namespace=job.namespace)

    return hub.call("reading the Job's state", final_or_current)


def cancel(hub: Hub, job: Submitted) -> None:
    """Cancel the Job (Stop, Ctrl-C); the job inside is stopped and cleans up what it made."""
    try:
        hub.api.cancel_job(job_id=job.job_id, namespace=job.namespace)
    except Exception as exc:  # the Job may have ended meanwhile; say so rather than hide it
        raise QuantizerError(f"could not cancel the Job {job.url}: {hub.events.scrub(str(exc))}") from exc
