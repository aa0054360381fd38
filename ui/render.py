"""Turn a report into what the page shows: a results table, a size chart, side-by-side samples."""

from __future__ import annotations

import pandas as pd

from quantizer.report import Report, result_row
from quantizer.texts import SAMPLE_PROMPT

# the page's columns: the shared cells of quantizer.report, with the status and target made for the page
SHARED_COLUMNS = ("size", "ratio", "ppl source", "ppl", "ppl Δ", "top-1", "time")
RESULT_COLUMNS = ["type", "status", "target", *SHARED_COLUMNS]


def results_frame(report: Report | None) -> pd.DataFrame:
    rows = []
    for r in report.results if report else []:
        target = f"[{r.target_repo}]({r.url})" if r.url else (r.output_dir or r.target_repo or "")
        rows.append([r.quant_type, "✅ ok" if r.ok else f"❌ {r.error}", target, *result_row(r, SHARED_COLUMNS)])
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def sizes_frame(report: Report | None) -> pd.DataFrame:
    """Megabytes of weights per model, the source first."""
    if not report or not report.results:
        return pd.DataFrame({"model": [], "MB": []})
    source_bytes = report.results[0].source_bytes or 0
    rows = [("source", source_bytes / 1e6)]
    rows += [(r.quant_type, r.output_bytes / 1e6) for r in report.results if r.output_bytes]
    return pd.DataFrame(rows, columns=["model", "MB"])


def samples_markdown(report: Report | None) -> str:
    if not report or report.sample_source is None:
        return ""
    lines = [
        f"**Prompt:** {SAMPLE_PROMPT}",
        "",
        "| model | answer (greedy) |",
        "|---|---|",
        f"| source | {one_line(report.sample_source)} |",
    ]
    lines += [f"| {r.quant_type} | {one_line(r.verify.sample)} |" for r in report.results if r.verify]
    return "\n".join(lines)


def one_line(text: str) -> str:
    return (text or "(no text)").replace("\n", " ").replace("|", "\\|")
