"""What the ``campaign`` commands print: learning rounds, progress, submit, report and status.

The campaign group of :mod:`cspflow.cli.render` (moved beside it, as
:mod:`cspflow.cli.render_templates` was, to keep each module under the project's size limit):
the live progress of ``campaign run``, its start and lost-run lines, ``campaign submit``, the
final report of ``campaign run`` and ``campaign status`` with their ``--json`` layouts, and the
tables and cells they are made of (learning rounds, sources and operators, relaxations,
rediscovery, reruns). Like :mod:`cspflow.cli.render`, every function takes plain data and
returns a renderable, a string, a list of them or a JSON-able dict; none reads the database or
prints.
"""

from __future__ import annotations

from cspflow.cli.render import hull_table, top_json, top_table

__all__ = [
    "iteration_tables",
    "learn_table",
    "progress_table",
    "progress_line",
    "campaign_start_line",
    "lost_run_line",
    "submit_json",
    "submit_line",
    "campaign_report_json",
    "campaign_report",
    "campaign_status_json",
    "campaign_status",
    "arms_line",
    "reruns_line",
]


def _mae(metrics: dict | None, key: str, digits: int = 1) -> str:
    value = (metrics or {}).get(key)
    return "-" if value is None else f"{value:.{digits}f}"


# the held-out figures that decide promotion (docs/learn.md); force MAE on frames with forces
rel, force = "relative_energy_mae_mev_per_atom", "force_mae_moving_mev_per_a"


def learn_table(iterations: list[dict]):
    """Per learning round: model, frames, held-out MAEs before -> after, promotion, re-screening."""
    from rich.table import Table

    rounds = [it for it in iterations if it.get("learn")]
    if not rounds:
        return None
    t = Table(title="learning rounds (held-out DFT frames: current model -> new model)")
    for col in ("iteration", "model", "frames", "rel. E MAE meV/atom", "rank corr.",
                "F MAE meV/A", "previous held-out E MAE", "promoted", "re-screened"):  # fmt: skip
        t.add_column(col)
    for it in rounds:
        rec = it["learn"]
        if not rec.get("trained"):
            t.add_row(str(it["iteration"]), "-", str(rec.get("n_frames") or "-"), "-", "-", "-",
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
        fg = rec.get("forgetting") or {}
        forgot = "-" if not fg else (
            f"{_mae(fg.get('before'), 'energy_mae_mev_per_atom')} -> "
            f"{_mae(fg.get('after'), 'energy_mae_mev_per_atom')} ({fg.get('previous_model')})"
        )  # fmt: skip
        t.add_row(str(it["iteration"]), str(rec.get("model_id")), str(rec.get("n_frames")),
                  f"{_mae(before, rel)} -> {_mae(after, rel)}",
                  f"{_mae(before, 'rank_correlation', 2)} -> {_mae(after, 'rank_correlation', 2)}",
                  f"{_mae(before, force)} -> {_mae(after, force)}",
                  forgot, "yes" if rec.get("promoted") else "no", screened)  # fmt: skip
    t.caption = (
        "relative energies per composition, rank correlation with DFT, forces on frames with "
        "non-zero DFT forces; previous held-out: the parent model's held-out frames (absolute "
        "E MAE), parent -> new model (forgetting); why a model was (not) promoted: "
        "`cspflow model show ID`"
    )
    return t


# ---------------------------------------------------------------------------------------------
# campaign run / submit / status


def progress_table(p: dict, elapsed: float):
    """The live table of ``campaign run``: candidates, fireworks and running jobs now."""
    from rich.table import Table

    t = Table(title=f"iteration {p['iteration']}  ({elapsed:.0f} s)", expand=False)
    t.add_column("candidates")
    t.add_column("fireworks")
    t.add_column("running now")
    cands = "  ".join(f"{k} {v}" for k, v in sorted(p["candidates"].items())) or "-"
    fws = "  ".join(f"{k} {v}" for k, v in sorted(p["fireworks"].items()))
    t.add_row(cands, fws, "\n".join(p["running"]) or "-")
    return t


def progress_line(p: dict, elapsed: float) -> str:
    """The progress of ``campaign run`` as one line (when stderr is not a terminal)."""
    return (f"[{elapsed:6.0f} s] iteration {p['iteration']}  candidates {p['candidates']}  "
            f"running {p['running']}")  # fmt: skip


def campaign_start_line(spec, doc: dict, created: bool, lost: list[int]) -> str:
    """What ``campaign run`` says when it starts (a new campaign) or resumes one."""
    if not created:
        return (f"resuming campaign {spec.name} (state {doc['state']})"
                + (f"; rerunning interrupted fireworks {lost}" if lost else ""))  # fmt: skip
    return (f"campaign {spec.name}: {', '.join(spec.formulas())} in {spec.system()}, "
            f"{spec.stop.max_iterations} iteration(s) max, DFT: {spec.dft.engine}")  # fmt: skip


def lost_run_line(lost) -> str:
    """One lost run that ``campaign run`` reran (a :class:`~cspflow.scheduler.reconcile.LostRun`)."""
    return f"lost run rerun: fw {lost.fw_id} {lost.name} ({lost.reason}: {lost.detail})"


def submit_json(name: str, created: bool, nodes: list[int], state: str) -> dict:
    """``cspflow campaign submit --json``."""
    return {"campaign": name, "created": created, "fw_ids": nodes, "state": state}


def submit_line(name: str, created: bool, nodes: list[int]) -> str:
    """``cspflow campaign submit``: submitted or not, the first fireworks, what to run next."""
    return (f"campaign {name}: {'submitted' if created else 'already submitted'}, "
            f"fireworks {nodes[:8]}{' ...' if len(nodes) > 8 else ''}; run workers with "
            f"`cspflow worker start --category gpu|cpu`")  # fmt: skip


def campaign_report_json(name: str, doc: dict, top: list[dict], plot: str | None,
                         elapsed: float) -> dict:  # fmt: skip
    """``cspflow campaign run --json``: the final state, the iterations and the best structures."""
    return {"campaign": name, "state": doc.get("state"), "stop_reason": doc.get("stop_reason"),
            "iterations": doc.get("iterations", []), "rediscovery": _last_rediscovery(doc),
            "top": top_json(top), "hull_plot": plot, "elapsed_s": round(elapsed, 1)}  # fmt: skip


def _last_rediscovery(doc: dict) -> dict:
    """The latest iteration's rediscovery record per formula (the stopping signal)."""
    return ((doc.get("iterations") or [{}])[-1]).get("rediscovery") or {}


def iteration_tables(iterations: list[dict]) -> list:
    """The learning and per-operator tables of a campaign's iterations (those that apply)."""
    tables = [learn_table(iterations), operator_table(iterations)]
    return [x for x in tables if x is not None]


def campaign_report(name: str, doc: dict, hull: dict | None, top: list[dict], plot: str | None,
                    elapsed: float) -> list:  # fmt: skip
    """What ``campaign run`` prints at the end, in order: iterations, learning, hull, best."""
    from rich.table import Table

    t = Table(title=f"campaign {name}: {doc.get('state')} ({doc.get('stop_reason')})")
    for col in ("iteration", "candidates", "duplicates", "MLIP relaxations", "DFT runs (total)",
                "best from templates",
                "hull", "wall s"):  # fmt: skip
        t.add_column(col)
    for it in doc.get("iterations", []):
        h = it.get("hull") or {}
        b = it.get("best_sources") or {}
        t.add_row(str(it["iteration"]), " ".join(f"{k}:{v}" for k, v in sorted(it["counts"].items())),
                  str(it.get("duplicates")), relaxations_cell(it.get("relaxations")),
                  str(it.get("dft_runs_total")),
                  f"{b['template']}/{b['top']}" if b else "-",
                  f"v{h.get('version')} {h.get('fidelity_key') or h.get('level')} stable {h.get('stable_formulas')}" if h else "-",
                  str(it.get("wall_time_s")))  # fmt: skip
    out: list = [t, *iteration_tables(doc.get("iterations", []))]
    last = (doc.get("iterations") or [{}])[-1]
    for formula, rec in sorted((last.get("rediscovery") or {}).items()):
        out.append(f"lowest {formula} found {rediscovery_line(rec)}")
    if hull:
        out.append(hull_table(hull))
    out.append(top_table(top, "lowest-energy unique structures"))
    if plot:
        out.append(f"hull plot: {plot}")
    out.append(f"finished in {elapsed:.0f} s; `cspflow results top {name} --json` for scripts")
    return out


def relaxations_cell(stats: dict | None) -> str:
    """One cell: how an iteration's MLIP relaxations ended and what they cost."""
    if not stats:
        return "-"
    return (f"{stats.get('converged', 0)} converged, {stats.get('pruned', 0)} pruned, "
            f"{stats.get('failed', 0)} failed; {stats.get('evaluations', 0)} evaluations, "
            f"{stats.get('steps', 0)} steps, {stats.get('wall_s', 0)} s")  # fmt: skip


def campaign_status_json(name: str, doc: dict, wf: dict, p: dict, reruns: dict,
                         top: list[dict]) -> dict:  # fmt: skip
    """``cspflow campaign status --json``."""
    return {"campaign": name, "state": doc["state"], "stop_reason": doc.get("stop_reason"),
            "workflow_state": wf.get("state"), "iteration": doc.get("iteration"),
            "candidates": p["candidates"], "fireworks": p["fireworks"],
            "running": p["running"], "relaxations": p.get("relaxations"),
            "iterations": doc.get("iterations", []), "rediscovery": _last_rediscovery(doc),
            "reruns": reruns, "top": top_json(top)}  # fmt: skip


def campaign_status(name: str, doc: dict, wf: dict, p: dict, reruns: dict, top: list[dict]) -> list:
    """What ``cspflow campaign status`` prints, in order: state, learning rounds, best structures."""
    from rich.table import Table

    t = Table(title=f"campaign {name}")
    t.add_column("field")
    t.add_column("value")
    t.add_row("state", f"{doc['state']} {doc.get('stop_reason') or ''}")
    t.add_row("workflow", str(wf.get("state")))
    t.add_row("iteration", str(doc.get("iteration")))
    t.add_row("candidates", "  ".join(f"{k} {v}" for k, v in sorted(p["candidates"].items())))
    t.add_row("fireworks", "  ".join(f"{k} {v}" for k, v in sorted(p["fireworks"].items())))
    t.add_row("running", "\n".join(p["running"]) or "-")
    t.add_row("MLIP relaxations", relaxations_cell(p.get("relaxations")))
    t.add_row("reruns", reruns_line(reruns))
    last = (doc.get("iterations") or [{}])[-1]
    for formula, rec in sorted((last.get("rediscovery") or {}).items()):
        t.add_row(f"lowest found {formula}", rediscovery_line(rec))
    shares = last.get("next_shares") or {}
    for formula, rec in sorted(shares.items()):
        parts = [f"{k} {v:.2f}" for k, v in rec.get("sources", {}).items()]
        parts += [f"{k} {v:.2f}" for k, v in rec.get("operators", {}).items()]
        parts += [f"{k} fu {v:.2f}" for k, v in rec.get("formula_units", {}).items()]
        if parts:
            t.add_row(f"next shares {formula}", "  ".join(parts))
        if rec.get("arms"):
            t.add_row(f"next arms {formula}", arms_line(rec["arms"]))
    out: list = [t, *iteration_tables(doc.get("iterations", []))]
    if top:
        out.append(top_table(top, "best structures"))
    return out


def arms_line(rec: dict, n: int = 5) -> str:
    """One cell: the bandit's largest (space group:formula units) shares, with their
    successes/relaxations so far."""
    outcomes = rec.get("outcomes") or {}
    parts = []
    for key, share in list((rec.get("top") or {}).items())[:n]:
        s, f = outcomes.get(key, (0, 0))
        parts.append(f"{key} {share:.2f} ({s}/{s + f})")
    return "  ".join(parts) + f"  (of {rec.get('arms')} arms; rest {rec.get('rest', 0):.2f})"


def rediscovery_line(rec: dict) -> str:
    """One cell: how often the lowest minimum was reached, and the chance of a new minimum."""
    if not rec.get("relaxed"):
        return "nothing relaxed yet"
    line = (f"{rec['best_hits']}x in {rec['relaxed']} relaxations ({rec['minima']} minima, "
            f"{rec['singletons']} seen once; next relaxation a new minimum: "
            f"{rec['new_minimum_chance']:.2f})")  # fmt: skip
    if rec.get("ground_state_confidence") is not None:  # summaries before the estimate lack it
        line += (f"; ground state seen: {rec['ground_state_confidence']:.2f} (next relaxation "
                 f"lower: {rec['lower_minimum_chance']:.3f})")  # fmt: skip
    return line


def operator_table(iterations: list[dict]):
    """Per source / mutation operator over all iterations: generated, relaxed, population, top 5,
    best energy (the ``operators`` record of each iteration summary, summed)."""
    from rich.table import Table

    total: dict[str, dict] = {}
    for it in iterations:
        for key, row in (it.get("operators") or {}).items():
            acc = total.setdefault(key, {"generated": 0, "relaxed": 0, "in_population": 0,
                                         "in_top": 0, "best": None})  # fmt: skip
            for f in ("generated", "relaxed", "in_population", "in_top"):
                acc[f] += row.get(f, 0)
            e = row.get("best_energy_per_atom")
            if e is not None and (acc["best"] is None or e < acc["best"]):
                acc["best"] = e
    if not total:
        return None
    t = Table(title="sources and operators (all iterations; population and top 5 as of each "
              "iteration's end)")  # fmt: skip
    for col in ("source / operator", "generated", "relaxed", "in population", "in top 5",
                "best eV/atom"):  # fmt: skip
        t.add_column(col)
    for key, acc in sorted(total.items()):
        best = "-" if acc["best"] is None else f"{acc['best']:.4f}"
        t.add_row(key, str(acc["generated"]), str(acc["relaxed"]), str(acc["in_population"]),
                  str(acc["in_top"]), best)  # fmt: skip
    return t


def reruns_line(reruns: dict) -> str:
    """One cell: how many fireworks ran more than once, and the lost runs with their reasons."""
    if not reruns["fireworks_rerun"]:
        return "none"
    lost = "; ".join(
        f"fw {r['fw_id']} {r['name']}: {r['reason']} ({r['detail']})" for r in reruns["lost"]
    )
    return (f"{reruns['fireworks_rerun']} firework(s) rerun, {reruns['lost_runs']} lost run(s)"
            + (f": {lost}" if lost else ""))  # fmt: skip
