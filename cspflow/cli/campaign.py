"""``cspflow campaign run|submit|status|pause|resume|extend`` and ``cspflow demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cspflow.cli import render, render_campaign
from cspflow.cli.common import JsonOpt, print_json

app = typer.Typer(no_args_is_help=True)

SpecArg = Annotated[Path, typer.Argument(help="Campaign spec (workflows/*.yaml).")]
NameArg = Annotated[str, typer.Argument(help="Campaign name (the spec's `name`).")]


def _submit(spec, settings) -> tuple[dict, bool, list[int]]:
    """Register the campaign and add its first iteration to the LaunchPad (once)."""
    from cspflow.scheduler.local import submit_campaign

    return submit_campaign(spec, settings)


@app.command("submit")
def submit(spec_file: SpecArg, json_out: JsonOpt = False) -> None:
    """Validate a spec and add the campaign to the LaunchPad only (cluster workers run it)."""
    from cspflow.schemas.campaign import load_spec
    from cspflow.settings import get_settings

    spec = load_spec(spec_file)
    doc, created, nodes = _submit(spec, get_settings())
    if json_out:
        print_json(render_campaign.submit_json(spec.name, created, nodes, doc["state"]))
    else:
        typer.echo(render_campaign.submit_line(spec.name, created, nodes))


def _take_run_lock(db, name: str) -> None:
    from cspflow.scheduler.local import take_run_lock

    take_run_lock(db, name)


def _progress_rows(db, name: str, nodes: list[int]) -> dict[str, Any]:
    from cspflow.store.reports import candidate_counts, firework_counts, relax_totals

    running = [fw["name"] for fw in db.fireworks.find(
        {"fw_id": {"$in": nodes}, "state": "RUNNING"}, {"name": 1})]  # fmt: skip
    doc = db.campaigns.find_one({"name": name}, {"iteration": 1, "state": 1}) or {}
    return {
        "iteration": doc.get("iteration", 0),
        "state": doc.get("state"),
        "candidates": candidate_counts(db, name),
        "fireworks": firework_counts(db, nodes),
        "running": running,
        "relaxations": relax_totals(db, name),
    }


@app.command("run")
def run(
    spec_file: SpecArg,
    out: Annotated[Path | None, typer.Option(help="Write hull.png and top.json here.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds (0: never).")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Submit a campaign (or resume it) and run it to the end with local cpu and gpu workers."""
    from rich.console import Console
    from rich.live import Live

    from cspflow.errors import CspflowError
    from cspflow.scheduler.local import check_local_engine, run_campaign_locally
    from cspflow.schemas.campaign import load_spec
    from cspflow.settings import get_settings
    from cspflow.store import get_database

    spec = load_spec(spec_file)
    settings = get_settings()
    check_local_engine(spec, settings)  # before anything is stored
    console = Console(stderr=True)
    db = get_database(settings)
    doc, created, nodes = _submit(spec, settings)
    if doc.get("state") == "paused":
        raise CspflowError(f"campaign {spec.name} is paused; `cspflow campaign resume {spec.name}` "
                           "first")  # fmt: skip

    def on_start(lost: list[int]) -> None:
        console.print(render_campaign.campaign_start_line(spec, doc, created, lost))
        if live:
            live.start()

    last_line = ""

    def on_poll(nodes: list[int], elapsed: float) -> None:
        nonlocal last_line
        p = _progress_rows(db, spec.name, nodes)
        if live:
            live.update(render_campaign.progress_table(p, elapsed))
        else:
            line = render_campaign.progress_line(p, elapsed)
            if line.split("]", 1)[1] != last_line.split("]", 1)[-1]:
                console.print(line, highlight=False)
            last_line = line

    def on_reconcile(report) -> None:
        for lost in report.lost:
            if lost.fw_id in report.rerun:
                console.print(render_campaign.lost_run_line(lost), highlight=False)

    t0 = time.monotonic()
    live = (
        Live(console=console, refresh_per_second=2, transient=False)
        if console.is_terminal
        else None
    )
    try:
        run_campaign_locally(spec, settings, nodes, created=created, timeout=timeout,
                             on_start=on_start, on_poll=on_poll, on_reconcile=on_reconcile)  # fmt: skip
    finally:
        if live:
            live.stop()
    _report(spec.name, settings, out, json_out, elapsed=time.monotonic() - t0)


def _report(name: str, settings, out: Path | None, json_out: bool, elapsed: float) -> None:
    from rich.console import Console

    from cspflow.campaign.state import campaign_doc
    from cspflow.hull import latest_hull, plot_hull
    from cspflow.store import get_database
    from cspflow.store.reports import top_structures

    db = get_database(settings)
    doc = campaign_doc(db, name) or {}
    from cspflow.store.reports import choose_fidelity

    chemsys = doc.get("chemsys", "")
    hull = latest_hull(db, chemsys, choose_fidelity(db, name, chemsys))
    top = top_structures(db, name, n=10)
    plot = None
    if out is not None:
        import json

        out.mkdir(parents=True, exist_ok=True)
        if hull:
            plot = str(plot_hull(hull, out / "hull.png"))
        (out / "top.json").write_text(json.dumps(render.top_json(top), indent=2, default=str))
    if json_out:
        print_json(render_campaign.campaign_report_json(name, doc, top, plot, elapsed))
        return
    console = Console()
    for part in render_campaign.campaign_report(name, doc, hull, top, plot, elapsed):
        console.print(part)


@app.command("status")
def status(name: NameArg, json_out: JsonOpt = False) -> None:
    """Iterations, counts per status, fireworks and best structures of a campaign."""
    from rich.console import Console

    from cspflow.campaign.state import campaign_doc
    from cspflow.errors import CspflowError
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow, rerun_summary, top_structures

    db = get_database()
    doc = campaign_doc(db, name)
    if doc is None:
        names = sorted(db.campaigns.distinct("name"))
        raise CspflowError(f"no campaign named {name!r}; known: {', '.join(names) or 'none'}")
    wf = campaign_workflow(db, name) or {}
    p = _progress_rows(db, name, list(wf.get("nodes", [])))
    reruns = rerun_summary(db, list(wf.get("nodes", [])))
    top = top_structures(db, name, n=5)
    if json_out:
        print_json(render_campaign.campaign_status_json(name, doc, wf, p, reruns, top))
        return
    console = Console()
    for part in render_campaign.campaign_status(name, doc, wf, p, reruns, top):
        console.print(part)


@app.command("pause")
def pause(name: NameArg) -> None:
    """Stop handing out the campaign's jobs (running ones finish); resume continues."""
    from cspflow.campaign.state import set_campaign_state
    from cspflow.scheduler.launchpad import get_launchpad
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow

    db = get_database()
    wf = _need_wf(db, name, campaign_workflow)
    get_launchpad().pause_wf(wf["nodes"][0])
    set_campaign_state(db, name, "paused")
    typer.echo(f"campaign {name} paused")


@app.command("resume")
def resume(name: NameArg) -> None:
    """Hand out a paused campaign's jobs again (workers, or `campaign run`, pick them up)."""
    from cspflow.campaign.state import set_campaign_state
    from cspflow.scheduler.launchpad import get_launchpad
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow

    db = get_database()
    wf = _need_wf(db, name, campaign_workflow)
    lp = get_launchpad()
    for fw_id in wf["nodes"]:  # FireWorks has pause_wf but no resume_wf
        lp.resume_fw(fw_id)
    set_campaign_state(db, name, "running")
    typer.echo(f"campaign {name} resumed")


@app.command("extend")
def extend(
    name: NameArg,
    iterations: Annotated[int, typer.Option(help="Iterations to add.", min=1)] = 1,
) -> None:
    """Allow more iterations; a finished campaign gets its next iteration submitted."""
    from cspflow.campaign.loop import iteration_flow
    from cspflow.campaign.state import campaign_doc, stored_spec
    from cspflow.errors import CspflowError
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow

    db = get_database()
    doc = campaign_doc(db, name)
    if doc is None:
        raise CspflowError(f"no campaign named {name!r}")
    spec = stored_spec(doc["spec"])
    done = len(doc.get("iterations", []))
    spec.stop.max_iterations = max(spec.stop.max_iterations, done) + iterations
    db.campaigns.update_one({"name": name}, {"$set": {"spec": spec.model_dump(mode="json")}})
    if doc["state"] == "completed":
        nxt = done
        db.campaigns.update_one({"name": name}, {"$set": {"state": "running", "iteration": nxt},
                                                 "$unset": {"stop_reason": ""}})  # fmt: skip
        wf = campaign_workflow(db, name)
        flow = iteration_flow(spec, nxt)
        if wf is None:
            submit_flow(flow, metadata={"campaign": name})
        else:
            from cspflow.scheduler.launchpad import flow_to_workflow

            # the last decide job of the campaign, by its metadata (jobflow copies it to the spec)
            last = db.fireworks.find_one(
                {"fw_id": {"$in": wf["nodes"]}, "spec.stage": "decide", "spec.campaign": name},
                sort=[("fw_id", -1)],
            )
            get_launchpad().append_wf(flow_to_workflow(flow), [last["fw_id"]])
    typer.echo(f"campaign {name}: max_iterations now {spec.stop.max_iterations}")


def _need_wf(db, name: str, campaign_workflow) -> dict:
    from cspflow.errors import CspflowError

    wf = campaign_workflow(db, name)
    if wf is None:
        raise CspflowError(f"no submitted campaign named {name!r}")
    return wf


def demo(
    out: Annotated[Path, typer.Option(help="Where the hull plot and top.json go.")] = Path(
        "demo-out"
    ),
    json_out: JsonOpt = False,
) -> None:
    """Run the quickstart campaign (workflows/quickstart.yaml) on the embedded database."""
    from cspflow.errors import CspflowError

    spec = Path(__file__).resolve().parents[2] / "workflows" / "quickstart.yaml"
    if not spec.is_file():
        raise CspflowError(f"{spec} not found: run `cspflow demo` from a cspflow checkout")
    run(spec, out=out, timeout=0, json_out=json_out)
