"""``cspflow campaign run|submit|status|pause|resume|extend`` and ``cspflow demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

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
    out = {"campaign": spec.name, "created": created, "fw_ids": nodes, "state": doc["state"]}
    if json_out:
        print_json(out)
    else:
        typer.echo(f"campaign {spec.name}: {'submitted' if created else 'already submitted'}, "
                   f"fireworks {nodes[:8]}{' ...' if len(nodes) > 8 else ''}; run workers with "
                   f"`cspflow worker start --category gpu|cpu`")  # fmt: skip


def _take_run_lock(db, name: str) -> None:
    from cspflow.scheduler.local import take_run_lock

    take_run_lock(db, name)


def _progress_rows(db, name: str, nodes: list[int]) -> dict[str, Any]:
    from cspflow.store.reports import candidate_counts, firework_counts

    running = [fw["name"] for fw in db.fireworks.find(
        {"fw_id": {"$in": nodes}, "state": "RUNNING"}, {"name": 1})]  # fmt: skip
    doc = db.campaigns.find_one({"name": name}, {"iteration": 1, "state": 1}) or {}
    return {
        "iteration": doc.get("iteration", 0),
        "state": doc.get("state"),
        "candidates": candidate_counts(db, name),
        "fireworks": firework_counts(db, nodes),
        "running": running,
    }


def _progress_table(p: dict, elapsed: float):
    from rich.table import Table

    t = Table(title=f"iteration {p['iteration']}  ({elapsed:.0f} s)", expand=False)
    t.add_column("candidates")
    t.add_column("fireworks")
    t.add_column("running now")
    cands = "  ".join(f"{k} {v}" for k, v in sorted(p["candidates"].items())) or "-"
    fws = "  ".join(f"{k} {v}" for k, v in sorted(p["fireworks"].items()))
    t.add_row(cands, fws, "\n".join(p["running"]) or "-")
    return t


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
        if not created:
            console.print(f"resuming campaign {spec.name} (state {doc['state']})"
                          + (f"; rerunning interrupted fireworks {lost}" if lost else ""))  # fmt: skip
        else:
            console.print(f"campaign {spec.name}: {', '.join(spec.formulas())} in {spec.system()}, "
                          f"{spec.stop.max_iterations} iteration(s) max, DFT: {spec.dft.engine}")  # fmt: skip
        if live:
            live.start()

    last_line = ""

    def on_poll(nodes: list[int], elapsed: float) -> None:
        nonlocal last_line
        p = _progress_rows(db, spec.name, nodes)
        if live:
            live.update(_progress_table(p, elapsed))
        else:
            line = (f"[{elapsed:6.0f} s] iteration {p['iteration']}  candidates {p['candidates']}  "
                    f"running {p['running']}")  # fmt: skip
            if line.split("]", 1)[1] != last_line.split("]", 1)[-1]:
                console.print(line, highlight=False)
            last_line = line

    def on_reconcile(report) -> None:
        for lost in report.lost:
            if lost.fw_id in report.rerun:
                console.print(f"lost run rerun: fw {lost.fw_id} {lost.name} ({lost.reason}: "
                              f"{lost.detail})", highlight=False)  # fmt: skip

    t0 = time.monotonic()
    live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
    try:
        run_campaign_locally(spec, settings, nodes, created=created, timeout=timeout,
                             on_start=on_start, on_poll=on_poll, on_reconcile=on_reconcile)  # fmt: skip
    finally:
        if live:
            live.stop()
    _report(spec.name, settings, out, json_out, elapsed=time.monotonic() - t0)


def _report(name: str, settings, out: Path | None, json_out: bool, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from cspflow.campaign.state import campaign_doc
    from cspflow.hull import latest_hull, plot_hull
    from cspflow.store import get_database
    from cspflow.store.reports import top_structures

    db = get_database(settings)
    doc = campaign_doc(db, name) or {}
    hull = latest_hull(db, doc.get("chemsys", ""))
    top = top_structures(db, name, n=10)
    plot = None
    if out is not None:
        import json

        out.mkdir(parents=True, exist_ok=True)
        if hull:
            plot = str(plot_hull(hull, out / "hull.png"))
        (out / "top.json").write_text(json.dumps(_top_json(top), indent=2, default=str))
    if json_out:
        print_json({"campaign": name, "state": doc.get("state"), "stop_reason": doc.get("stop_reason"),
                    "iterations": doc.get("iterations", []), "top": _top_json(top),
                    "hull_plot": plot, "elapsed_s": round(elapsed, 1)})  # fmt: skip
        return
    console = Console()
    t = Table(title=f"campaign {name}: {doc.get('state')} ({doc.get('stop_reason')})")
    for col in ("iteration", "candidates", "duplicates", "DFT runs (total)", "hull", "wall s"):
        t.add_column(col)
    for it in doc.get("iterations", []):
        h = it.get("hull") or {}
        t.add_row(str(it["iteration"]), " ".join(f"{k}:{v}" for k, v in sorted(it["counts"].items())),
                  str(it.get("duplicates")), str(it.get("dft_runs_total")),
                  f"v{h.get('version')} {h.get('level')} stable {h.get('stable_formulas')}" if h else "-",
                  str(it.get("wall_time_s")))  # fmt: skip
    console.print(t)
    learning = learn_table(doc.get("iterations", []))
    if learning is not None:
        console.print(learning)
    if hull:
        from cspflow.cli.results import hull_table

        console.print(hull_table(hull))
    console.print(_top_table(top, "lowest-energy unique structures"))
    if plot:
        console.print(f"hull plot: {plot}")
    console.print(f"finished in {elapsed:.0f} s; `cspflow results top {name} --json` for scripts")


def _mae(metrics: dict | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return "-" if value is None else f"{value:.1f}"


def learn_table(iterations: list[dict]):
    """Per learning round: model, frames, held-out MAEs before -> after, promotion, re-screening."""
    from rich.table import Table

    rounds = [it for it in iterations if it.get("learn")]
    if not rounds:
        return None
    t = Table(title="learning rounds (held-out DFT frames: current model -> new model)")
    for col in ("iteration", "model", "frames", "E MAE meV/atom", "F MAE meV/A", "promoted",
                "re-screened"):  # fmt: skip
        t.add_column(col)
    for it in rounds:
        rec = it["learn"]
        if not rec.get("trained"):
            t.add_row(str(it["iteration"]), "-", str(rec.get("n_frames") or "-"), "-", "-",
                      "no", rec.get("reason") or "")  # fmt: skip
            continue
        m = rec.get("metrics") or {}
        before, after = m.get("current"), m.get("new")
        rs = rec.get("rescreen") or {}
        screened = "-" if rs.get("skipped") or not rs else (
            f"{rs.get('n_single_points')} sp, {rs.get('relaxed')} relaxed"
            + (f", {rs['failed']} failed" if rs.get("failed") else "")
            + (f", new best {','.join(rs['best_changed'])}" if rs.get("best_changed") else "")
        )  # fmt: skip
        t.add_row(str(it["iteration"]), str(rec.get("model_id")), str(rec.get("n_frames")),
                  f"{_mae(before, 'energy_mae_mev_per_atom')} -> {_mae(after, 'energy_mae_mev_per_atom')}",
                  f"{_mae(before, 'force_mae_mev_per_a')} -> {_mae(after, 'force_mae_mev_per_a')}",
                  "yes" if rec.get("promoted") else "no", screened)  # fmt: skip
    t.caption = "why a model was (not) promoted: `cspflow model show ID`"
    return t


def _top_json(rows: list[dict]) -> dict:
    from cspflow.store.reports import TOP_SCHEMA_VERSION

    return {"schema_version": TOP_SCHEMA_VERSION,
            "structures": [{k: v for k, v in r.items() if k != "structure"} for r in rows]}  # fmt: skip


def _top_table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("rank", "id", "formula", "spacegroup", "atoms", "level", "E/atom (eV)", "E_hull (meV/atom)"):
        t.add_column(col)
    for r in rows:
        e = r["energy_per_atom"][r["level"]]
        eh = r["e_above_hull"]
        t.add_row(str(r["rank"]), r["candidate_id"], r["formula"], str(r["spacegroup"]),
                  str(r["nsites"]), r["level"], f"{e:.4f}",
                  "-" if eh is None else f"{eh * 1000:.1f}")  # fmt: skip
    return t


@app.command("status")
def status(name: NameArg, json_out: JsonOpt = False) -> None:
    """Iterations, counts per status, fireworks and best structures of a campaign."""
    from rich.console import Console
    from rich.table import Table

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
        print_json({"campaign": name, "state": doc["state"], "stop_reason": doc.get("stop_reason"),
                    "workflow_state": wf.get("state"), "iteration": doc.get("iteration"),
                    "candidates": p["candidates"], "fireworks": p["fireworks"],
                    "running": p["running"], "iterations": doc.get("iterations", []),
                    "reruns": reruns, "top": _top_json(top)})  # fmt: skip
        return
    console = Console()
    t = Table(title=f"campaign {name}")
    t.add_column("field")
    t.add_column("value")
    t.add_row("state", f"{doc['state']} {doc.get('stop_reason') or ''}")
    t.add_row("workflow", str(wf.get("state")))
    t.add_row("iteration", str(doc.get("iteration")))
    t.add_row("candidates", "  ".join(f"{k} {v}" for k, v in sorted(p["candidates"].items())))
    t.add_row("fireworks", "  ".join(f"{k} {v}" for k, v in sorted(p["fireworks"].items())))
    t.add_row("running", "\n".join(p["running"]) or "-")
    t.add_row("reruns", _reruns_line(reruns))
    console.print(t)
    learning = learn_table(doc.get("iterations", []))
    if learning is not None:
        console.print(learning)
    if top:
        console.print(_top_table(top, "best structures"))


def _reruns_line(reruns: dict) -> str:
    """One cell: how many fireworks ran more than once, and the lost runs with their reasons."""
    if not reruns["fireworks_rerun"]:
        return "none"
    lost = "; ".join(f"fw {r['fw_id']} {r['name']}: {r['reason']} ({r['detail']})" for r in reruns["lost"])
    return (f"{reruns['fireworks_rerun']} firework(s) rerun, {reruns['lost_runs']} lost run(s)"
            + (f": {lost}" if lost else ""))  # fmt: skip


@app.command("pause")
def pause(name: NameArg) -> None:
    """Stop handing out the campaign's jobs (running ones finish); resume continues."""
    from cspflow.scheduler.launchpad import get_launchpad
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow

    db = get_database()
    wf = _need_wf(db, name, campaign_workflow)
    get_launchpad().pause_wf(wf["nodes"][0])
    db.campaigns.update_one({"name": name}, {"$set": {"state": "paused"}})
    typer.echo(f"campaign {name} paused")


@app.command("resume")
def resume(name: NameArg) -> None:
    """Hand out a paused campaign's jobs again (workers, or `campaign run`, pick them up)."""
    from cspflow.scheduler.launchpad import get_launchpad
    from cspflow.store import get_database
    from cspflow.store.reports import campaign_workflow

    db = get_database()
    wf = _need_wf(db, name, campaign_workflow)
    lp = get_launchpad()
    for fw_id in wf["nodes"]:  # FireWorks has pause_wf but no resume_wf
        lp.resume_fw(fw_id)
    db.campaigns.update_one({"name": name}, {"$set": {"state": "running"}})
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
    out: Annotated[Path, typer.Option(help="Where the hull plot and top.json go.")] = Path("demo-out"),
    json_out: JsonOpt = False,
) -> None:
    """Run the quickstart campaign (workflows/quickstart.yaml) on the embedded database."""
    from cspflow.errors import CspflowError

    spec = Path(__file__).resolve().parents[2] / "workflows" / "quickstart.yaml"
    if not spec.is_file():
        raise CspflowError(f"{spec} not found: run `cspflow demo` from a cspflow checkout")
    run(spec, out=out, timeout=0, json_out=json_out)
