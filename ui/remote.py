"""The page's job on Hugging Face Jobs: for a signed-in visitor only, with their own token, in their own account and
on their own bill, never the Space's. One source, or a batch (one Job each, at most QUANTIZER_MAX_BATCH).

The Jobs run elsewhere, so they take no turn on the Space's job lock; the visitor's tickets still limit how many
they start at once, and Stop or a closed tab cancels them. Each Job's log streams into the page, and its report
comes back into the page, the visitor's history and Trackio, as a local job's does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import gradio as gr

from quantizer import batch, hf_jobs, on_jobs, settings
from quantizer.errors import QuantizerError
from quantizer.events import EventStream
from quantizer.hub import Hub
from quantizer.report import Report
from quantizer.spec import JobSpec

from . import auth
from .form import FormValues
from .jobs import REGISTRY

HERE = "this Space"
SIGN_IN = "sign in with Hugging Face first: a Job runs in your own account and is billed to it."


def flavor_choices(token: str | None = None, oauth_token: gr.OAuthToken | None = None):
    """The dropdown of where to run: this Space, or a Jobs flavor with its price (from the Hub's list)."""
    try:
        known = hf_jobs.flavors(Hub(auth.token_for(token, oauth_token)))
    except QuantizerError as exc:
        return gr.update(choices=[(HERE, "")], info=f"Hugging Face Jobs unavailable: {exc}")
    return gr.update(choices=[(HERE, ""), *((f.describe(), f.name) for f in known)])


def batch_specs(values: FormValues, secret: str) -> list[JobSpec]:
    """The source and the extra sources, each as a Job's spec (the Space's own limits do not apply to a Job)."""
    if values.save_only:
        raise QuantizerError('"Save on the Space only" cannot go with a Job: its disk is gone when it ends.')
    spec = replace(values.to_spec(secret), deadline_seconds=None, max_source_bytes=None)
    items = [batch.BatchItem(spec.source, spec.target)]
    items += batch.parse_lines(values.more_sources or "", "the extra sources")
    cap = settings.get("QUANTIZER_MAX_BATCH")
    if len(items) > cap:
        raise QuantizerError(f"a batch here takes at most {cap} sources, got {len(items)}: split it.")
    return batch.specs(items, spec)


def estimate(values: FormValues, oauth_token: gr.OAuthToken | None = None) -> str:
    """The flavor, its price and each Job's estimated cost, before anything is submitted."""
    if not values.on_jobs:
        return ""
    secret = auth.token_for(values.token, oauth_token)
    if not secret:
        return f"❌ {SIGN_IN}"
    try:
        hub = Hub(secret, EventStream())
        target = on_jobs.resolve(on_jobs.JobsOptions(flavor=values.on_jobs), hub)
        estimates = [on_jobs.prepare(spec, target, hub).estimate for spec in batch_specs(values, secret)]
    except QuantizerError as exc:
        return f"❌ {exc}"
    total = sum(e.usd for e in estimates)
    lines = [f"- {spec_source}: {e.text()}" for spec_source, e in zip(sources(values), estimates, strict=False)]
    return f"**On Hugging Face Jobs, billed to you: about ${total:.4f} in all**\n" + "\n".join(lines)


def sources(values: FormValues) -> list[str]:
    return [values.source, *(item.source for item in batch.parse_lines(values.more_sources or "", "-"))]


def run_on_jobs(values: FormValues, oauth_token: gr.OAuthToken | None, request: gr.Request | None, view) -> Iterator:
    """Start a Job a source for the signed-in visitor, stream their logs, and end with their reports. `view` is the
    page's `JobView` (its status and log)."""
    secret = auth.token_for(values.token, oauth_token)
    if not secret:
        yield view(f"❌ {SIGN_IN}")
        return
    events = EventStream()
    hub = Hub(secret, events)
    try:
        specs = batch_specs(values, secret)
        target = on_jobs.resolve(on_jobs.JobsOptions(flavor=values.on_jobs), hub)  # the visitor's own account
    except QuantizerError as exc:
        yield view(f"❌ {exc}")
        return
    ticket = REGISTRY.admit(target.namespace, request.session_hash if request else None)
    if ticket is None:
        yield view("❌ you already have a job running and one waiting: wait for them, or press Stop.")
        return
    jobs = on_jobs.JobsRun(target, hub, events)
    ticket.on_stop(lambda _reason: jobs.cancel())
    rows: list[batch.BatchRow] = []
    finished = False
    try:
        for item in jobs.run(specs, stopped=lambda: ticket.stopped):
            if isinstance(item, batch.BatchRow):
                rows.append(item)
                continue
            view.add(item)
            yield view("⏳ running on Hugging Face Jobs…")  # a line a stage or a note: each shows at once
        finished = True
    finally:
        if not finished:  # the page went away mid-way: its Jobs go too
            jobs.cancel()
        REGISTRY.done(ticket)
    yield final_view(rows, view, ticket.reason)


def final_view(rows: list[batch.BatchRow], view, stopped: str) -> tuple:
    """Every source's results in one table, the batch's summary in the log, and a status that says how it ended."""
    reports = [row.report for row in rows if row.report]
    merged = Report(
        source=", ".join(row.source for row in rows),
        revision=None,
        device=reports[0].device if reports else "",
        hardware=reports[0].hardware if reports else "",
        results=[result for report in reports for result in report.results],
    )
    view.log.extend(["", batch.summary_table(rows)])
    if stopped:
        return view(f"⏹ stopped ({stopped}): the Jobs were cancelled and nothing of them was kept", merged)
    failures = [f"{row.source}: {row.error}" for row in rows if row.error]
    failures += [f"{r.quant_type}: {r.error}" for r in merged.results if not r.ok]
    if failures:
        return view("❌ " + " ".join(failures), merged)
    return view("✅ done on Hugging Face Jobs: " + ", ".join(r.url or "" for r in merged.results), merged)
