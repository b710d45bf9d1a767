"""``cspflow campaign ...`` and ``cspflow demo``."""

from __future__ import annotations

import typer

from cspflow.cli.common import JsonOpt, not_built, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run() -> None:
    """Submit a campaign and run it to the end on this machine (not built yet)."""
    not_built("campaign run")


@app.command("submit")
def submit() -> None:
    """Add a campaign to the launchpad for cluster workers (not built yet)."""
    not_built("campaign submit")


@app.command("status")
def status() -> None:
    """Iterations, counts per status and best structures of a campaign (not built yet)."""
    not_built("campaign status")


def demo(json_out: JsonOpt = False) -> None:
    """Start the embedded database, submit a cpu job + a gpu job, run both workers, report."""
    import time

    from rich.console import Console
    from rich.table import Table

    from cspflow.db import redact_uri, resolve_uri
    from cspflow.demo import platform_flow
    from cspflow.scheduler import get_launchpad, run_worker, submit_flow
    from cspflow.settings import get_settings
    from cspflow.store import get_jobstore

    settings = get_settings()
    console = Console(stderr=json_out)
    uri = resolve_uri(settings)
    console.print(f"database: {redact_uri(uri)} (db {settings.db_name})")
    flow = platform_flow()
    t0 = time.perf_counter()
    ids = submit_flow(flow, settings, metadata={"cspflow": "demo"})
    fw_ids = sorted(ids.values())
    console.print(f"submitted workflow with fireworks {fw_ids}")
    lp = get_launchpad(settings)
    launches = {"cpu": 0, "gpu": 0}
    for _ in range(10):
        for category in ("cpu", "gpu"):
            launches[category] += run_worker(category, settings, nlaunches=0, sleep_time=1)
        state = lp.get_wf_by_fw_id(fw_ids[0]).state
        if state in ("COMPLETED", "FIZZLED"):
            break
    elapsed = time.perf_counter() - t0
    store = get_jobstore(settings)
    store.connect()
    rows = []
    for fw_id in fw_ids:
        fw = lp.get_fw_by_id(fw_id)
        job_uuid = fw.tasks[0]["job"].uuid
        try:
            out = store.get_output(job_uuid)
        except ValueError:  # the job did not complete
            out = None
        launch = lp.launches.find_one({"fw_id": fw_id}, {"fworker": 1})
        rows.append(
            {
                "fw_id": fw_id,
                "name": fw.name,
                "stage": fw.spec.get("stage"),
                "category": fw.spec.get("_category"),
                "ran_on": (launch or {}).get("fworker", {}).get("category"),
                "state": fw.state,
                "output": out if isinstance(out, dict) and "spacegroup" in out else None,
            }
        )
    summary = {"workflow_state": state, "elapsed_s": round(elapsed, 2), "launches": launches,
               "fireworks": rows, "database": redact_uri(uri), "db_name": settings.db_name}  # fmt: skip
    if json_out:
        print_json(summary)
    else:
        table = Table(title="cspflow platform demo")
        for col in ("fw_id", "job", "stage", "_category", "ran on", "state"):
            table.add_column(col)
        for r in rows:
            table.add_row(str(r["fw_id"]), r["name"], str(r["stage"]), str(r["category"]),
                          str(r["ran_on"]), r["state"])  # fmt: skip
        console.print(table)
        result = next((r["output"] for r in rows if r["output"]), None)
        console.print(f"result: {result}")
        console.print(f"workflow {state} in {elapsed:.1f} s; inspect with "
                      f"`lpad -l fw_configs/my_launchpad.yaml get_wflows`")  # fmt: skip
    if state != "COMPLETED":
        raise typer.Exit(1)
