"""What the commands print: rich tables, report lines and ``--json`` layouts, built from plain data.

Every function takes plain data (dicts, lists, the library's result objects) and returns a rich
renderable, a string, a list of them to print in order, or a JSON-able dict; none of them reads
the database or prints. The command modules (:mod:`cspflow.cli.campaign`,
:mod:`cspflow.cli.results`, ...) gather the data, call these and print the result, so no command
module needs another one. The renderers of the ``campaign`` commands are in
:mod:`cspflow.cli.render_campaign`, those of ``generate --list-templates`` in
:mod:`cspflow.cli.render_templates`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

    from cspflow.bench.score import BenchReportDoc

__all__ = [
    "hull_table",
    "hull_json",
    "excluded_caption",
    "top_json",
    "top_table",
    "generate_row",
    "generate_json",
    "generate_lines",
    "model_table",
    "model_show",
    "bench_run_line",
    "bench_table",
    "bench_summary_line",
    "reconcile_lines",
    "check_row",
    "check_json",
    "check_report",
    "dft_table",
    "relax_row",
    "relax_summary",
    "relax_table",
    "server_json",
    "server_status_json",
]


# ---------------------------------------------------------------------------------------------
# hull and best structures (results, campaign run/status)


def hull_table(doc: dict, entries: list[dict] | None = None):
    """A rich table of a stored hull version: every entry, its energies and whether it is stable."""
    from rich.table import Table

    chemsys = doc["chemsys"]
    entries = entries if entries is not None else sorted(
        doc["entries"], key=lambda e: (e["formula"], e["e_above_hull"]))  # fmt: skip
    at = doc.get("fidelity_key") or doc["level"]
    corrected = f", {doc['correction']}-corrected" if doc.get("correction") else ""
    t = Table(title=f"{chemsys} hull v{doc['version']} at {at} ({doc['level']} energies{corrected}"
                    f"{'' if doc['complete'] else ', per composition: elemental references missing'})",
              caption=excluded_caption(doc), caption_justify="left")  # fmt: skip
    for col in ("id", "formula", "E/atom (eV)", "E_form (eV/atom)", "E_hull (meV/atom)", "stable"):
        t.add_column(col)
    for e in entries:
        ef = e.get("formation_energy_per_atom")
        t.add_row(e["entry_id"], e["formula"], f"{e['energy_per_atom']:.4f}",
                  "-" if ef is None else f"{ef:.4f}", f"{e['e_above_hull'] * 1000:.1f}",
                  "yes" if e["entry_id"] in doc["stable"] else "")  # fmt: skip
    return t


def excluded_caption(doc: dict) -> str | None:
    """One line per entry the hull's correction scheme left out (None when there are none)."""
    excluded = doc.get("excluded") or []
    if not excluded:
        return None
    lines = [f"left out ({len(excluded)}, never mixed in):"]
    lines += [f"{x['entry_id']} {x['formula']} ({x['source']}): {x['reason']}" for x in excluded]
    return "\n".join(lines)


def incomplete_reason(doc: dict) -> str | None:
    """Why a stored hull is incomplete (None: it is complete); older hulls lack the reason."""
    if doc.get("complete", True):
        return None
    return doc.get("incomplete_reason") or (
        f"no energy for element(s) {', '.join(doc.get('missing_elements') or [])}: "
        "e_above_hull is relative to the lowest structure of each composition"
    )


def hull_json(chemsys: str, doc: dict, entries: list[dict], plot: Path | None) -> dict:
    """``cspflow results hull --json``: the hull version, its fidelity, its entries and the plot
    path."""
    return {"chemsys": chemsys, "version": doc["version"], "level": doc["level"],
            "fidelity_key": doc.get("fidelity_key"), "fidelity": doc.get("fidelity"),
            "correction": doc.get("correction"), "excluded": doc.get("excluded") or [],
            "complete": doc["complete"], "incomplete_reason": incomplete_reason(doc),
            "missing_elements": doc.get("missing_elements", []), "stable": doc["stable"],
            "stable_formulas": doc["stable_formulas"], "entries": entries,
            "plot": str(plot) if plot else None}  # fmt: skip


def top_json(rows: list[dict]) -> dict:
    """``{"schema_version": ..., "structures": [...]}`` of ranked structures, without structures."""
    from cspflow.store.reports import TOP_SCHEMA_VERSION

    return {"schema_version": TOP_SCHEMA_VERSION,
            "structures": [{k: v for k, v in r.items() if k != "structure"} for r in rows]}  # fmt: skip


def top_table(rows: list[dict], title: str):
    """A rich table of ranked structures (:func:`cspflow.store.reports.top_structures` rows)."""
    from rich.table import Table

    t = Table(title=title)
    for col in (
        "rank",
        "id",
        "formula",
        "spacegroup",
        "atoms",
        "level",
        "E/atom (eV)",
        "E_hull (meV/atom)",
        "source",
    ):
        t.add_column(col)
    for r in rows:
        e = r["energy_per_atom"][r["level"]]
        eh = r["e_above_hull"]
        src = str(r.get("source")) + (f": {r['template']}" if r.get("template") else "")
        t.add_row(str(r["rank"]), r["candidate_id"], r["formula"], str(r["spacegroup"]),
                  str(r["nsites"]), r["level"], f"{e:.4f}",
                  "-" if eh is None else f"{eh * 1000:.1f}", src)  # fmt: skip
    n_tpl = sum(1 for r in rows if r.get("source") == "template")
    t.caption = f"{n_tpl} of these {len(rows)} came from templates"
    return t


# ---------------------------------------------------------------------------------------------
# generate


def generate_row(cid: str, file: str, gen, fp) -> dict:
    """One written candidate in ``summary.json`` (a ``Generated`` and its ``Fingerprint``)."""
    return {"candidate_id": cid, "file": file, "source": gen.source, "params": gen.params,
            "seed": gen.seed, "parent_ids": gen.parent_ids, "spacegroup": fp.spacegroup,
            "nsites": len(gen.structure)}  # fmt: skip


def generate_json(summary, max_atoms: int, rows: list[dict]) -> dict:
    """``summary.json`` of ``cspflow generate`` (also its ``--json``): the batch summary + files."""
    out = summary.model_dump()
    out["max_atoms"] = max_atoms
    out["candidates"] = rows
    return out


def generate_lines(s, formula: str, out: Path, n: int, max_atoms: int) -> tuple[str, str | None]:
    """The summary line of ``cspflow generate`` and, when fewer than ``n`` were found, a warning."""
    line = (
        f"{s.n_new} unique {formula} structures in {out} ({s.n_attempts} tried, "
        f"{s.n_duplicates} duplicates, {sum(s.rejected.values())} rejected, {s.elapsed_s:.1f} s); "
        f"{len(s.spacegroups)} space groups, formula units {', '.join(s.formula_units)}"
    )
    if s.complete:
        return line, None
    return line, (
        f"warning: only {s.n_new} of {n} unique structures found; the search space of "
        f"{formula} up to {max_atoms} atoms may be exhausted (raise --max-atoms)"
    )


# ---------------------------------------------------------------------------------------------
# model registry


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metrics_row(metrics: dict | None) -> tuple[str, str]:
    m = metrics or {}
    return _fmt(m.get("energy_mae_mev_per_atom")), _fmt(m.get("force_mae_mev_per_a"))


def _deciding_row(metrics: dict | None) -> tuple[str, str, str]:
    """The figures promotion decides on: relative-energy MAE, rank correlation, force MAE on
    frames with forces (with their frame count)."""
    m = metrics or {}
    force = _fmt(m.get("force_mae_moving_mev_per_a"))
    if m.get("force_mae_moving_mev_per_a") is not None:
        force += f" ({m.get('n_force_frames', 0)})"
    return (
        _fmt(m.get("relative_energy_mae_mev_per_atom")),
        _fmt(m.get("rank_correlation"), 2),
        force,
    )


def model_table(rows: list[dict]):
    """``cspflow model list``: registered models with held-out errors and promotion state."""
    from rich.table import Table

    t = Table(
        title=f"MLIP registry ({len(rows)} model{'s' if len(rows) != 1 else ''}); "
        "held-out: relative-energy MAE meV/atom, rank correlation, force MAE meV/A (frames)"
    )
    t.add_column("model_id", no_wrap=True)  # ids are copied into commands: never cut them
    t.add_column("chemsys")
    t.add_column("created")
    t.add_column("kind")
    t.add_column("parent", no_wrap=True)
    for col in ("frames", "rel. E MAE", "rank", "F MAE", "promoted"):
        t.add_column(col)
    for r in rows:
        e, rank, f = _deciding_row((r.get("metrics") or {}).get("new"))
        t.add_row(
            r["model_id"], r["chemsys"], str(r.get("created_at", ""))[:10], r.get("kind") or "mace",
            r.get("parent") or "-", str((r.get("training_set") or {}).get("n_frames", "-")), e,
            rank, f, "yes" if r.get("promoted") else "no",
        )  # fmt: skip
    return t


def model_show(doc: dict, chain: list[str]) -> list:
    """What ``cspflow model show`` prints, in order (strings carry rich markup)."""
    from rich.table import Table

    out: list = []
    ts = doc.get("training_set") or {}
    out.append(f"[bold]{doc['model_id']}[/bold] ({doc.get('kind') or 'mace'})  {doc['chemsys']}  created {str(doc['created_at'])[:19]}"
               f"  campaign {doc.get('campaign') or '-'} iteration {doc.get('iteration', '-')}")  # fmt: skip
    out.append(f"lineage: {' <- '.join(chain)}")
    if doc.get("foundation_model"):
        out.append(f"fine-tuned from: {doc['foundation_model']}")
    out.append(
        f"promoted: {'yes' if doc.get('promoted') else 'no'} ({doc.get('promotion_reason', '')})"
    )
    metrics = doc.get("metrics") or {}
    t = Table(title=f"held-out split: {ts.get('n_test', 0)} frames of "
                    f"{len(ts.get('test_candidate_ids', []))} candidate(s), hash {ts.get('test_hash', '')}")  # fmt: skip
    t.add_column("")
    t.add_column("model", no_wrap=True)
    for col in ("rel. E MAE (meV/atom)", "rank corr.", "F MAE, frames with forces (meV/A)",
                "abs. E MAE (meV/atom, info)", "F MAE, all (meV/A)"):  # fmt: skip
        t.add_column(col)
    for label, key in (("before (current)", "current"), ("after (this model)", "new")):
        m = metrics.get(key)
        e, f = _metrics_row(m)
        t.add_row(label, (m or {}).get("model", "-") if m else "none", *_deciding_row(m), e, f)
    t.caption = "promotion decides on relative-energy MAE, then rank, then forces (docs/learn.md)"
    out.append(t)
    fg = doc.get("forgetting")
    if fg:
        before, after = _metrics_row(fg.get("before")), _metrics_row(fg.get("after"))
        out.append(
            f"forgetting: on the held-out frames of {fg['previous_model']} ({fg.get('n_frames', 0)} "
            f"frames of {len(fg.get('candidate_ids') or [])} candidate(s)): energy MAE "
            f"{before[0]} -> {after[0]} meV/atom, force MAE {before[1]} -> {after[1]} meV/A "
            "(parent -> this model)"
        )
    rp = doc.get("replay")
    if rp:
        sources = ", ".join(f"{k} {v}" for k, v in sorted((rp.get("sources") or {}).items()))
        dropped = ", ".join(f"{v} {k}" for k, v in sorted((rp.get("dropped") or {}).items()))
        out.append(f"replay: {rp.get('n_kept', 0)} of {rp.get('n_read', 0)} frames replayed "
                   f"(read: {sources or '-'}; dropped: {dropped or 'none'})")  # fmt: skip
    e0s = ", ".join(f"{el} {v:.4f}" for el, v in sorted((doc.get("e0s") or {}).items()))
    out.append(
        f"training set: {ts.get('n_frames', 0)} frames ({ts.get('n_train', 0)} train, "
        f"{ts.get('n_test', 0)} test; {ts.get('n_final', 0)} final, {ts.get('n_ionic', 0)} ionic) "
        f"from {len(ts.get('candidate_ids', []))} candidates, hash {ts.get('set_hash', '')}"
    )
    out.append(f"E0s (eV): {e0s or '-'}")
    if doc.get("energy_shift"):
        shift = ", ".join(f"{el} {v:+.4f}" for el, v in sorted(doc["energy_shift"].items()))
        out.append(f"energy shift into CHGNet's composition model (eV/atom): {shift}")
    if doc.get("committee"):
        out.append(f"committee: {', '.join(doc['committee'])}")
    return out


# ---------------------------------------------------------------------------------------------
# bench


def bench_run_line(run) -> str:
    """One finished benchmark run (entry, repeat): found or not, relaxations, wall time."""
    by = f" ({run.first_found_source})" if run.first_found_source else ""
    what = (f"found, rank {run.rank}, first after {run.first_found} relaxations{by}" if run.found
            else "not found" + (f" (rank {run.rank})" if run.rank else ""))  # fmt: skip
    if run.stopped_early:
        what += " (stopped: found)"
    if run.error:
        what = f"error: {run.error}"
    return f"{run.formula} repeat {run.repeat}: {what}; {run.relaxations} relaxations in {run.wall_s:.0f} s"


def bench_table(report: BenchReportDoc) -> Table:
    """Per entry of a benchmark report: found, ranks, relaxations, reference energy gap, time."""
    from rich.table import Table

    opts = report.options
    title = (f"{report.set_name}: {opts.model}, sources {','.join(opts.sources)}, "
             f"budget {opts.budget}, top {report.top_k}, {opts.repeats} repeat(s)"
             + (", reference type left out" if opts.leave_out_reference else ""))  # fmt: skip
    t = Table(title=title)
    for col in ("entry", "found", "rank", "first found (relaxations)", "relaxations", "unique",
                "dE ref (meV/atom)", "top-1 space group = reference's", "wall s"):  # fmt: skip
        t.add_column(col)
    by_entry: dict[str, list] = {}
    for r in report.runs:
        by_entry.setdefault(r.formula, []).append(r)

    def join(values: Iterable[object]) -> str:
        return ", ".join("-" if v is None else str(v) for v in values)

    for formula, runs in by_entry.items():
        found = sum(r.found for r in runs)
        flag = ("yes" if found else "no") if len(runs) == 1 else f"{found}/{len(runs)}"
        if any(r.error for r in runs):
            flag += " (error)"
        if any(r.reference_in_library for r in runs):  # found by lookup, not by search
            flag += f" (lookup: {runs[0].reference_in_library})"
        if runs[0].left_out:
            flag += f" (left out: {', '.join(runs[0].left_out)})"
        t.add_row(formula, flag, join(r.rank for r in runs), join(r.first_found for r in runs),
                  join(r.relaxations for r in runs), join(r.unique for r in runs),
                  join(r.reference_delta_mev for r in runs),
                  join(_yes_no(r.top_spacegroup_match) for r in runs),
                  join(f"{r.wall_s:.0f}" for r in runs))  # fmt: skip
    return t


def _yes_no(flag: bool | None) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


def bench_curve_table(report: BenchReportDoc) -> Table:
    """Success rate against budget (relaxations), over every run of the report."""
    from rich.table import Table

    t = Table(title="success rate against budget (relaxations to the first match)")
    t.add_column("budget")
    t.add_column("found")
    t.add_column("success rate")
    for point in report.summary.get("success_curve") or []:
        rate = point["success_rate"]
        t.add_row(str(point["budget"]), f"{point['found']}/{point['runs']}",
                  "-" if rate is None else f"{100 * rate:.0f}%")  # fmt: skip
    return t


def bench_curve_plot(report: BenchReportDoc, path: Path) -> Path:
    """Success rate against budget as a step plot (PNG): all runs, and each entry's share of
    its repeats."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cspflow.bench.score import found_within

    budget = report.options.budget
    xs = list(range(0, budget + 1))

    def curve(runs: list) -> list[float]:
        return [sum(found_within(r, x) for r in runs) / len(runs) for x in xs]

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    by_entry: dict[str, list] = {}
    for r in report.runs:
        by_entry.setdefault(r.formula, []).append(r)
    for formula, runs in by_entry.items():
        ax.step(xs, curve(runs), where="post", lw=1, alpha=0.6, label=formula)
    ax.step(xs, curve(report.runs), where="post", lw=2.5, color="black", label="all runs")
    opts = report.options
    ax.set(xlabel="relaxations", ylabel="share of runs that found the reference",
           ylim=(-0.02, 1.02), xlim=(0, budget),
           title=f"{report.set_name}: {','.join(opts.sources)}, {opts.repeats} repeat(s)")  # fmt: skip
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def bench_summary_line(report) -> str:
    """The success rate line under the benchmark table."""
    s = report.summary
    med = s.get("median_relaxations_to_success")
    lookup = s.get("lookup") or {}
    split = ""
    if lookup.get("runs"):
        search = s["search_only"]
        split = (f"; search only {search['runs_found']}/{search['runs']}, by lookup in the "
                 f"prototype/template library {lookup['runs_found']}/{lookup['runs']}")  # fmt: skip
    loo = s.get("leave_one_out") or {}
    if loo.get("runs"):
        split += f"; leave-one-out {loo['runs_found']}/{loo['runs']}"
    return (
        f"success rate {s['runs_found']}/{s['runs']} = {100 * (s['success_rate'] or 0):.0f}%  "
        f"(entries found in every repeat {s['entries_found_every_repeat']}/{s['entries']}); "
        f"median relaxations to success {'-' if med is None else med}; "
        f"top-ranked space group = reference's in {s.get('top_spacegroup_matches', 0)}/"
        f"{s['runs']}; total {report.total_s:.0f} s{split}"
    )


# ---------------------------------------------------------------------------------------------
# workers


def reconcile_lines(report, dry_run: bool) -> list[str]:
    """``cspflow worker reconcile``: what was checked, each lost run and what was done with it."""
    lines = [f"checked {report.running} RUNNING launch(es) (Slurm: {report.slurm}; heartbeat "
             f"expiration {report.expiration_s:g} s): {len(report.lost)} lost"]  # fmt: skip
    done = "rerun" if not dry_run else "would rerun (--dry-run)"
    for run in report.lost:
        status = done if dry_run or run.fw_id in report.rerun else "left to another reconciler"
        lines.append(f"  fw {run.fw_id} {run.name!r} launch {run.launch_id} on {run.host}: "
                     f"{run.reason}: {run.detail} -> {status}")  # fmt: skip
    for launch_id in report.reservations_cancelled:
        lines.append(f"  reservation of launch {launch_id} cancelled (its Slurm job ended)")
    return lines


def check_row(fw_id: int, fw, launch: dict | None, output: Any) -> dict:
    """One firework of ``cspflow worker check``: its job, category, who ran it, its result."""
    return {
        "fw_id": fw_id,
        "name": fw.name,
        "stage": fw.spec.get("stage"),
        "category": fw.spec.get("_category"),
        "ran_on": (launch or {}).get("fworker", {}).get("category"),
        "state": fw.state,
        "output": output if isinstance(output, dict) and "spacegroup" in output else None,
    }


def check_json(state: str, elapsed: float, launches: dict, rows: list[dict], database: str,
               db_name: str) -> dict:  # fmt: skip
    """``cspflow worker check --json``."""
    return {"workflow_state": state, "elapsed_s": round(elapsed, 2), "launches": launches,
            "fireworks": rows, "database": database, "db_name": db_name}  # fmt: skip


def check_report(rows: list[dict], state: str, elapsed: float) -> list:
    """What ``cspflow worker check`` prints at the end: who ran what, the result, the state."""
    from rich.table import Table

    table = Table(title="cspflow platform check")
    for col in ("fw_id", "job", "stage", "_category", "ran on", "state"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["fw_id"]), r["name"], str(r["stage"]), str(r["category"]),
                      str(r["ran_on"]), r["state"])  # fmt: skip
    result = next((r["output"] for r in rows if r["output"]), None)
    return [table, f"result: {result}",
            f"workflow {state} in {elapsed:.1f} s; inspect with "
            f"`lpad -l fw_configs/my_launchpad.yaml get_wflows`"]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# ad hoc relaxations (dft relax, relax)


def dft_table(summary: dict, engine: str):
    """``cspflow dft relax``: one row per structure (status, energy, wall time, CIF or reason)."""
    from rich.table import Table

    scheme = summary.get("correction")
    table = Table(title=f"DFT ({engine}, preset {summary['preset']})")
    cols = ["name", "formula", "status", "E (eV/atom)"]
    cols += [f"E {scheme} (eV/atom)"] if scheme else []
    for col in (*cols, "wall (s)", "cif / reason"):
        table.add_column(col)
    for row in summary["results"]:
        epa = row.get("energy_per_atom")
        wall = row.get("wall_time_s")
        corr = row.get("correction") or {}
        cells = [row["name"], row["formula"], row["status"], "" if epa is None else f"{epa:.4f}"]
        if scheme:  # the corrected energy, or why the scheme refused the result
            fixed = corr.get("corrected_energy_per_atom")
            cells.append(f"{fixed:.4f}" if fixed is not None else corr.get("reason") or "")
        table.add_row(
            *cells,
            "" if wall is None else f"{wall:.1f}",
            row.get("cif") or (row.get("reason") or ""),
        )
    return table


def relax_row(name: str, o, cif: Path | None) -> dict:
    """One structure of ``cspflow relax``'s summary (a relaxer outcome and its CIF, if written)."""
    return {
        "name": name,
        "formula": o.structure.composition.reduced_formula if o.structure else None,
        "converged": o.converged,
        "steps": o.steps,
        "energy_per_atom": o.energy_per_atom,
        "fmax": o.fmax,
        "spacegroup": o.spacegroup,
        "lattice_abc": list(o.structure.lattice.abc) if o.structure else None,
        "volume_per_atom": o.structure.volume / len(o.structure) if o.structure else None,
        "failure_reason": o.failure_reason,
        "cif": str(cif) if cif else None,
    }


def relax_summary(mlip, fmax: float, rows: list[dict], wall_s: float) -> dict:
    """``summary.json`` of ``cspflow relax`` (also its ``--json``)."""
    return {
        "model_id": mlip.model_id,
        "dispersion": getattr(mlip, "dispersion", None),
        "device": mlip.device,
        "fmax": fmax,
        "n_structures": len(rows),
        "n_relaxed": sum(r["failure_reason"] is None for r in rows),
        "n_failed": sum(r["failure_reason"] is not None for r in rows),
        "wall_s": wall_s,
        "structures": rows,
    }


def relax_table(rows: list[dict], model_id: str, out: Path):
    """``cspflow relax``: one row per structure (energy, steps, space group, ok or why not)."""
    from rich.table import Table

    table = Table(title=f"relaxed with {model_id} -> {out}")
    for col in ("name", "formula", "E/atom (eV)", "steps", "spacegroup", "status"):
        table.add_column(col)
    for r in rows:
        e = f"{r['energy_per_atom']:.4f}" if r["energy_per_atom"] is not None else "-"
        status = "ok" if r["failure_reason"] is None else f"failed: {r['failure_reason']}"
        table.add_row(
            r["name"], r["formula"] or "-", e, str(r["steps"]), r["spacegroup"] or "-", status
        )
    return table


# ---------------------------------------------------------------------------------------------
# database


def server_json(info) -> dict:
    """``cspflow db start --json``: the embedded server's URI, pid and data directory."""
    return {"uri": info.uri, "pid": info.pid, "data_dir": str(info.data_dir)}


def server_status_json(info, data_dir: Path) -> dict:
    """``cspflow db status --json`` for the embedded server (``info`` None: not running)."""
    return {"running": info is not None, "uri": info.uri if info else None,
            "pid": info.pid if info else None, "data_dir": str(data_dir)}  # fmt: skip
