"""`textok batch-status DIR`: the Gemini Batch Mode jobs of a caption output folder.

    textok batch-status out/val_caps             # refreshes states when GEMINI_API_KEY is set
    textok batch-status out/val_caps --no-refresh --json

One line per job from the ledger (DIR/batch/jobs/*.json): local phase, remote state,
requests, results written, keys to resubmit, age, estimated cost (worst case at batch
prices while in flight; from reported usage once collected). Refreshing only reads job
states (`batches.get`); collecting results is `textok caption ... --gemini-mode batch`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Optional

import click

from textok.pipeline.commands.options import BeamCommand, lease_flag


def _age(iso: Optional[str], now: dt.datetime) -> str:
    if not iso:
        return "-"
    s = (now - dt.datetime.fromisoformat(iso)).total_seconds()
    return f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.0f}m" if s >= 60 else f"{s:.0f}s"


def job_rows(entries, now: dt.datetime) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        done = e.outcome.get("results") if e.outcome else None
        cost = e.outcome.get("cost_usd") if not e.in_flight else e.est_cost_usd
        rows.append({"id": e.id, "job": e.job_name or "-", "phase": e.phase, "state": e.remote_state or "-",
                     "requests": len(e.keys), "results": done, "to_resubmit": len(e.retry),
                     "age": _age(e.submitted_at or e.created_at, now),
                     "est_cost_usd": None if cost is None else round(cost, 4),
                     "cost_basis": "usage" if not e.in_flight else "worst case"})
    return rows


@click.command("batch-status", cls=BeamCommand)
@click.argument("output_dir")
@click.option("--refresh/--no-refresh", default=True, show_default=True,
              help="Ask the API for the state of jobs in flight (needs GEMINI_API_KEY).")
@click.option("--gemini-base-url", "base_url", default=None, help="API base URL (a proxy or a local fake server).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@lease_flag
def batch_status_cmd(output_dir: str, refresh: bool, base_url: Optional[str], as_json: bool) -> None:
    """List the Batch Mode jobs of a caption output DIR: state, counts, age, estimated cost.

    Refreshed states are written to the ledger only when DIR is free (this command then takes its
    writer lease for the update); while a `textok caption` run holds DIR, it only reads."""
    from textok.lease import LeaseHeld, describe, hold_lease, read_lease
    from textok.pipeline.captioning.batch_ledger import SUBMITTED, load_all, now_iso, update
    from textok.pipeline.captioning.captioners.gemini import GeminiConfigError, api_key_from_env
    from textok.pipeline.captioning.captioners.gemini_batch import BatchAPIError, BatchClient

    if "://" not in output_dir:
        output_dir = os.path.abspath(output_dir)
    corrupt: list[str] = []
    entries = load_all(output_dir, errors=corrupt)
    if not entries and not corrupt:
        raise click.ClickException(f"{output_dir}: no batch jobs (expected DIR/batch/jobs/*.json from "
                                   "`textok caption --gemini-mode batch --output DIR`)")
    note = None
    if refresh and api_key_from_env() and any(e.phase == SUBMITTED for e in entries):
        try:
            client = BatchClient(base_url)
            states = {e.id: client.get(e.job_name).state for e in entries if e.phase == SUBMITTED}
        except (GeminiConfigError, BatchAPIError) as err:
            raise click.ClickException(f"refreshing job states failed: {err}") from err
        polled = now_iso()

        def refreshed(entry):  # read-modify-write: only a job still submitted ON DISK takes the new state
            if entry.phase == SUBMITTED:
                entry.remote_state, entry.polled_at = states[entry.id], polled
        try:
            with hold_lease(output_dir, "batch-status"):
                entries = [update(output_dir, e.id, refreshed) if e.id in states else e for e in entries]
        except LeaseHeld:
            holder = read_lease(output_dir)
            note = (f"read-only: {output_dir} is held by {describe(holder) if holder else 'another run'}; the states "
                    "below were fetched now and not written to the ledger")
            for e in entries:
                refreshed(e) if e.id in states else None
    rows = job_rows(entries, dt.datetime.now(dt.timezone.utc))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        cols = ["id", "job", "phase", "state", "requests", "results", "to_resubmit", "age", "est_cost_usd"]
        table = [cols] + [[str(r[c]) if r[c] is not None else "-" for c in cols] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        for row in table:
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))
        total = sum(r["est_cost_usd"] or 0.0 for r in rows)
        click.echo(f"{len(rows)} jobs, {sum(r['requests'] for r in rows)} requests, est. ${total:.4f} at batch prices")
    if note:
        click.echo(note, err=True)
    if corrupt:  # the readable jobs are listed above; the unreadable ones are named, and the exit says so
        raise click.ClickException(f"{len(corrupt)} ledger file(s) unreadable: " + "; ".join(corrupt))
