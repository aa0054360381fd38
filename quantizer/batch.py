"""Several sources in one go: `--batch FILE` (one source a line, optionally followed by its target) or
`--batch collection:SLUG` (a Hub collection's models). Each source is its own job, with the same flags, one after
another on this machine or one Hugging Face Job each (`--on-jobs`); a source's failure stays its own, and the
summary gives every source x type with its link, size, quality and status."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import on_jobs
from .errors import InputError, QuantizerError
from .events import EventStream
from .hub import Hub
from .on_jobs import BatchRow
from .report import Report, human_bytes, percent_change
from .spec import JobSpec
from .tables import markdown_table

COLLECTION = "collection:"


@dataclass(frozen=True)
class BatchItem:
    source: str
    target: str | None = None


def read_batch(ref: str, hub: Hub, limit: int | None = None) -> list[BatchItem]:
    """The batch's sources, checked for shape (each is then checked as any job's source is)."""
    if ref.startswith(COLLECTION):
        slug = ref.removeprefix(COLLECTION)
        collection = hub.call("reading the collection", lambda: hub.api.get_collection(slug))
        items = [BatchItem(item.item_id) for item in collection.items if item.item_type == "model"]
        where = f"the collection {slug}"
    else:
        items = parse_lines(read_text(Path(ref)), ref)
        where = ref
    if not items:
        raise InputError(f"{where} names no model to quantize.")
    if limit is not None and len(items) > limit:
        raise InputError(f"{where} holds {len(items)} sources; a batch here takes at most {limit}: split it.")
    return items


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read the batch file {path}: {exc}; give a text file with one source a line, or collection:SLUG."
        ) from exc


def parse_lines(text: str, where: str) -> list[BatchItem]:
    """`SOURCE [TARGET]` a line; blank lines and `#` comments skipped."""
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise InputError(f"{where}, line {number}: expected SOURCE [TARGET], got {len(fields)} fields.")
        items.append(BatchItem(*fields))
    return items


def specs(items: list[BatchItem], template: JobSpec) -> list[JobSpec]:
    return [dataclasses.replace(template, source=item.source, target=item.target) for item in items]


def run_here(items: list[BatchItem], template: JobSpec, run: Callable[[JobSpec], Report], say) -> list[BatchRow]:
    """One after another on this machine."""
    rows = []
    for number, spec in enumerate(specs(items, template), 1):
        say(f"batch {number}/{len(items)}: {spec.source}")
        try:
            rows.append(BatchRow(source=spec.source, report=run(spec)))
        except QuantizerError as exc:
            rows.append(BatchRow(source=spec.source, error=str(exc)))
    return rows


def run_on_jobs(
    items: list[BatchItem], template: JobSpec, options: on_jobs.JobsOptions, events: EventStream
) -> list[BatchRow]:
    """One Job a source, with the flavor, image and account settled once; Ctrl-C cancels every Job started."""
    hub = Hub(template.token, events)
    jobs = on_jobs.JobsRun(on_jobs.resolve(options, hub), hub, events)
    return on_jobs.print_until_done(jobs, jobs.run(specs(items, template)), events)


SUMMARY_COLUMNS = ["source", "type", "status", "link", "size", "ppl Δ", "top-1", "why"]


def summary_rows(rows: list[BatchRow]) -> list[list[str]]:
    table = []
    for row in rows:
        if row.report is None or row.report.error or not row.report.results:
            why = row.error or (row.report.error if row.report else None) or "no type ran"
            table.append([row.source, "-", "failed", row.job_url or "-", "-", "-", "-", why])
            continue
        for result in row.report.results:
            verify = result.verify
            size = f"{human_bytes(result.output_bytes)} ({result.size_ratio:.0%})" if result.size_ratio else "-"
            table.append(
                [
                    row.source,
                    result.quant_type,
                    result.status,
                    result.url or result.output_dir or "-",
                    size,
                    percent_change(verify.ppl_delta_pct) if verify else "-",
                    f"{verify.top1_agreement:.1%}" if verify and verify.top1_agreement is not None else "-",
                    result.error or "",
                ]
            )
    return table


def summary_table(rows: list[BatchRow]) -> str:
    return markdown_table(SUMMARY_COLUMNS, summary_rows(rows))


def failed(rows: list[BatchRow]) -> bool:
    return any(
        row.report is None or not row.report.results or not all(r.ok for r in row.report.results) for row in rows
    )
