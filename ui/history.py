"""The History tab: past jobs read back from Trackio's store."""

from __future__ import annotations

import pandas as pd

from quantizer import settings, tracking
from quantizer.hub import repo_url

HISTORY_COLUMNS = ["time", "source", "type", "target", "size ratio", "ppl Δ", "status"]


def history_frame(project: str | None = None, *, user: str | None = None, nobody: bool = False) -> pd.DataFrame:
    """Past jobs as the History table: all of them, one user's (`user`), or none (`nobody`: not signed in)."""
    rows = []
    for run in [] if nobody else tracking.history(project, user=user):
        target, url = run.get("target") or "", run.get("url")
        ratio, delta = run.get("size_ratio"), run.get("ppl_delta_pct")
        status = run.get("status") or "running"
        if run.get("error"):
            status = f"{status}: {run['error']}"
        rows.append(
            [
                (run.get("created") or "")[:19].replace("T", " "),
                run.get("source") or "",
                run.get("quant_type") or "",
                f"[{target}]({url})" if url else target,
                f"{ratio:.1%}" if isinstance(ratio, (int, float)) else "",
                f"{delta:+.2f}%" if isinstance(delta, (int, float)) else "",
                status,
            ]
        )
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def dashboard_help(project: str | None = None) -> str:
    project = tracking.project_name(project)
    space = settings.get("TRACKIO_SPACE_ID")
    where = (
        f"Runs sync to the Trackio Space [{space}]({repo_url('spaces/' + space)})."
        if space
        else f"Runs are stored in `{tracking.store_path(project)}`."
    )
    return (
        f"Every job is a [Trackio](https://github.com/gradio-app/trackio) run in project `{project}`. {where} "
        f"For the full dashboard (stage times, all figures), run `trackio show --project {project}`."
    )
