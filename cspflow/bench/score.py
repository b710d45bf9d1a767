"""Scoring a benchmark campaign against its reference, and the report documents.

Definitions
-----------
found, rank
    The campaign's unique relaxed structures (non-failed, non-duplicate) are ordered by MLIP
    energy and collapsed once more with the set's StructureMatcher; ``rank`` is the 1-based
    position of the first one that matches the reference, ``found`` is ``rank <= top_k``.
relaxations to first found
    Candidates are counted in generation order (iteration, then creation time); the count is
    the position of the first relaxed candidate whose relaxed structure matches the reference.
    All candidates of an iteration are relaxed in one batch, so within an iteration this is the
    order they were generated in. Failed relaxations count as spent.
top-ranked space group (CSPBench's metric)
    Whether the lowest unique structure has the reference's space group (spglib, symprec 0.1 for
    both: the relaxation records its structure's at that tolerance).
success against budget
    The share of runs that found the reference whose first match came within ``b``
    relaxations (``first_found <= b``).
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cspflow.bench.options import BenchOptions
from cspflow.bench.sets import MatchSpec
from cspflow.errors import CspflowError

__all__ = [
    "BenchRunDoc",
    "BenchReportDoc",
    "evaluate_run",
    "relaxed_candidates",
    "count_relaxed",
    "scores_budget_left",
    "summarize",
    "success_curve",
    "found_within",
    "read_report",
]

#: 2: ``top[].spacegroup`` is the number (it was the MLIP symbol), ``spacegroup_symbol`` beside it
#: 3: ``reference_spacegroup``, ``top_spacegroup_match`` and ``first_found_source`` per run;
#: the summary's ``top_spacegroup_matches`` and ``success_curve``
SCHEMA_VERSION = 3

#: symprec of the reference's space group: the one the relaxation records use (relaxed.mlip)
SYMPREC = 0.1


class BenchRunDoc(BaseModel):
    """One campaign of the benchmark: one entry, one repeat."""

    schema_version: int = SCHEMA_VERSION
    formula: str = Field(description="Composition searched.")
    reference: str = Field(
        description="Reference structure file (relative to the current directory when under it)."
    )
    repeat: int = Field(description="Repeat index (0-based).")
    seed: int = Field(description="Generation seed of the campaign.")
    max_atoms: int = Field(description="Largest cell searched.")
    reference_in_library: str | None = Field(
        None,
        description="Name of the prototype-library structure type that is the reference, when "
        "the run used the prototype source: the run could look the answer up, and the summary "
        "counts it apart from the searches.",
    )
    left_out: list[str] = Field(
        default_factory=list,
        description="Template ids removed from the template library because they are the "
        "reference's structure type (--leave-out-reference).",
    )
    iterations: int = Field(description="Iterations run.")
    per_iteration: int = Field(description="Candidates generated per iteration.")
    relaxations: int = Field(0, description="Candidates relaxed (including failed ones).")
    failed: int = Field(0, description="Relaxations that failed.")
    unique: int = Field(0, description="Unique relaxed structures.")
    found: bool = Field(False, description="Reference among the top-k unique structures.")
    rank: int | None = Field(None, description="Rank of the reference among unique structures.")
    first_found: int | None = Field(
        None, description="Relaxations until the reference was first obtained (1-based)."
    )
    first_found_source: str | None = Field(
        None,
        description="Source of that first match (mutation children as mutation:<operator>).",
    )
    best_energy_per_atom: float | None = Field(None, description="Lowest MLIP energy (eV/atom).")
    reference_delta_mev: float | None = Field(
        None, description="Energy of the matched reference above the lowest (meV/atom)."
    )
    top: list[dict[str, Any]] = Field(
        default_factory=list, description="Top-k unique structures: id, spacegroup, nsites, energy."
    )
    reference_spacegroup: int | None = Field(
        None, description="Space-group number of the reference (symprec 0.1)."
    )
    top_spacegroup_match: bool | None = Field(
        None,
        description="The top-ranked unique structure has the reference's space group "
        "(CSPBench's metric; None: nothing relaxed).",
    )
    wall_s: float = Field(0.0, description="Wall time of the campaign (s).")
    stopped_early: bool = Field(
        False, description="The search ended before its budget because the reference was found."
    )
    error: str | None = Field(None, description="Why the campaign did not finish, if it did not.")


class BenchReportDoc(BaseModel):
    """Everything ``cspflow bench csp`` measured."""

    schema_version: int = SCHEMA_VERSION
    set_name: str
    set_file: str = Field(description="Set file (relative to the current directory when under it).")
    options: BenchOptions
    top_k: int
    match: MatchSpec
    runs: list[BenchRunDoc] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    total_s: float = 0.0
    host: dict[str, Any] = Field(default_factory=dict, description="Machine the run used.")
    server: dict[str, Any] = Field(
        default_factory=dict,
        description="The benchmark's own server (pid, uri, data_dir), removed.",
    )


def _matcher(match: MatchSpec) -> Any:
    from cspflow.dedup.match import matcher

    return matcher(ltol=match.ltol, stol=match.stol, angle_tol=match.angle_tol)


def evaluate_run(
    reference: Any,
    relaxed: list[dict[str, Any]],
    top_k: int,
    match: MatchSpec,
) -> dict[str, Any]:
    """Score one campaign's relaxed candidates against the reference (pure function).

    Parameters
    ----------
    reference
        The reference pymatgen Structure.
    relaxed
        Every relaxed candidate in generation order, each a dict with ``candidate_id``,
        ``structure`` (pymatgen Structure or None), ``energy_per_atom`` (None when failed),
        ``duplicate_of``, ``spacegroup`` and ``nsites``.
    top_k, match
        The set's rank cut and StructureMatcher tolerances.

    Returns
    -------
    dict
        ``relaxations``, ``failed``, ``unique``, ``rank``, ``found``, ``first_found``,
        ``first_found_source`` (that candidate's ``source``, when the rows carry one),
        ``best_energy_per_atom``, ``reference_delta_mev``, ``top`` (the top-k unique),
        ``reference_spacegroup`` and ``top_spacegroup_match`` (the top-ranked unique structure's
        space group, as its relaxation recorded it, is the reference's: CSPBench's metric).
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sm = _matcher(match)
    reference_sg = SpacegroupAnalyzer(reference, symprec=SYMPREC).get_space_group_number()

    def good(r: dict[str, Any]) -> bool:
        return r["energy_per_atom"] is not None and r["structure"] is not None

    ok = [r for r in relaxed if good(r)]
    first_found, first_source = None, None
    for i, r in enumerate(relaxed, start=1):
        if good(r) and sm.fit(reference, r["structure"]):
            first_found, first_source = i, r.get("source")
            break
    # unique minima by energy: the campaign's dedup groups each candidate with the one it
    # duplicates (one minimum, whichever member the reference matches), then the set's matcher
    # merges what is left; a minimum's energy is its lowest member's
    by_id = {r["candidate_id"]: r for r in ok}

    def root(r: dict[str, Any]) -> str:
        seen = {r["candidate_id"]}
        while r.get("duplicate_of") in by_id and r["duplicate_of"] not in seen:
            r = by_id[r["duplicate_of"]]
            seen.add(r["candidate_id"])
        return r["candidate_id"]

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault(root(r), []).append(r)
    unique: list[dict[str, Any]] = []
    members: list[list[dict[str, Any]]] = []
    for group in sorted(groups.values(), key=lambda g: min(r["energy_per_atom"] for r in g)):
        best_member = min(group, key=lambda r: r["energy_per_atom"])
        same = next(
            (k for k in range(max(0, len(unique) - 20), len(unique))
             if sm.fit(unique[k]["structure"], best_member["structure"])),
            None,
        )  # fmt: skip
        if same is None:
            unique.append(best_member)
            members.append(list(group))
        else:
            members[same].extend(group)
    rank = None
    if first_found is not None:
        rank = next(
            (k for k, group in enumerate(members, 1)
             if any(sm.fit(reference, r["structure"]) for r in group)),
            None,
        )  # fmt: skip
    best = unique[0]["energy_per_atom"] if unique else None
    delta = None
    if rank is not None and best is not None:
        delta = round((unique[rank - 1]["energy_per_atom"] - best) * 1000, 1)
    top = [
        {"rank": k, "candidate_id": u["candidate_id"], "spacegroup": u.get("spacegroup"),
         "spacegroup_symbol": u.get("spacegroup_symbol"), "nsites": u.get("nsites"), "energy_per_atom": u["energy_per_atom"],
         "matches_reference": rank == k}
        for k, u in enumerate(unique[:top_k], 1)
    ]  # fmt: skip
    return {
        "relaxations": len(relaxed),
        "failed": len(relaxed) - len(ok),
        "unique": len(unique),
        "rank": rank,
        "found": rank is not None and rank <= top_k,
        "first_found": first_found,
        "first_found_source": first_source,
        "best_energy_per_atom": best,
        "reference_delta_mev": delta,
        "top": top,
        "reference_spacegroup": reference_sg,
        "top_spacegroup_match": top[0]["spacegroup"] == reference_sg if top else None,
    }


def relaxed_candidates(db: Any, campaign: str) -> list[dict[str, Any]]:
    """The campaign's relaxed candidates in generation order, as :func:`evaluate_run` takes them."""
    from pymatgen.core import Structure

    from cspflow.store import candidate_stats

    rows = []
    for d in candidate_stats.relaxed_in_order(db, campaign):
        mlip = (d.get("relaxed") or {}).get("mlip") or {}
        failed = d.get("status") == "failed" or mlip.get("structure") is None
        rows.append(
            {
                "candidate_id": d["candidate_id"],
                "structure": None if failed else Structure.from_dict(mlip["structure"]),
                "energy_per_atom": None if failed else (d.get("energy_per_atom") or {}).get("mlip"),
                "duplicate_of": d.get("duplicate_of"),
                "spacegroup": mlip.get("spacegroup"),
                "spacegroup_symbol": mlip.get("spacegroup_symbol"),
                "nsites": d.get("nsites"),
                "source": _source_label(d),
            }
        )
    return rows


def _source_label(doc: dict[str, Any]) -> str | None:
    """``source``, or ``mutation:<operator>`` for a mutation child."""
    source = doc.get("source")
    operator = (doc.get("params") or {}).get("operator")
    return f"{source}:{operator}" if source == "mutation" and operator else source


def count_relaxed(db: Any, campaign: str) -> int:
    """Candidates of the campaign relaxed so far (progress)."""
    from cspflow.store import candidate_stats

    return candidate_stats.count_relaxed(db, campaign)


def scores_budget_left(spec: Any, scores: dict[str, Any]) -> bool:
    """Whether the search ended before spending its planned relaxations."""
    return scores["relaxations"] < spec.stop.max_iterations * spec.generate.per_iteration


def library_match(
    entry: Any, match: MatchSpec, sources: Any = ("prototype",), exclude: Any = ()
) -> str | None:
    """The library structure type that is ``entry``'s reference, or None.

    Built the way the ``prototype`` source (and, when ``sources`` holds it, the ``template``
    source without the ids in ``exclude``) builds candidates at the entry's ``max_atoms``, and
    compared with the set's matcher. A template hit is named ``template:NAME (ID)``.
    """
    from cspflow.generate.composition import parse_target
    from cspflow.generate.sources import Prototype, SourceContext
    from cspflow.generate.templates import Template

    sm = _matcher(match)
    target = parse_target(entry.formula, entry.max_atoms)
    if "prototype" in sources:
        for gen in Prototype().attempts(target, 0, SourceContext()):
            if gen is not None and sm.fit(entry.reference, gen.structure):
                return str(gen.params["prototype"])
    if "template" in sources:
        source = Template(exclude=list(exclude), database=False)
        for gen in source.attempts(target, 0, SourceContext()):
            if gen is not None and sm.fit(entry.reference, gen.structure):
                return f"template:{gen.params['template_name']} ({gen.params['template']})"
    return None


def left_out_types(entry: Any) -> list[str]:
    """Template ids that are the reference's structure type (removed by leave-one-out)."""
    from cspflow.generate.composition import parse_target
    from cspflow.generate.templates import reference_templates

    return reference_templates(entry.reference, parse_target(entry.formula, entry.max_atoms))


def _rates(runs: list[BenchRunDoc]) -> dict[str, Any]:
    found = [r for r in runs if r.found]
    return {"runs": len(runs), "runs_found": len(found),
            "success_rate": round(len(found) / len(runs), 3) if runs else None}  # fmt: skip


def read_report(path: Path) -> BenchReportDoc:
    """A saved report (``bench csp --json``), brought to this schema: runs of an earlier schema
    get the reference's space group (from the reference file, relative to the current
    directory as the report names it) and the top-1 match, and the summary is recomputed.

    Raises
    ------
    CspflowError
        When the file is not a readable report, or a reference it names cannot be read.
    """
    import json

    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        report = BenchReportDoc.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise CspflowError(f"cannot read the benchmark report {path}: {first}") from None
    for run in report.runs:
        if run.top_spacegroup_match is not None or not run.top:
            continue
        try:
            sga = SpacegroupAnalyzer(Structure.from_file(run.reference), symprec=SYMPREC)
        except (OSError, ValueError) as exc:
            raise CspflowError(
                f"{path}: cannot read the reference {run.reference} of {run.formula}: {exc}"
            ) from None
        run.reference_spacegroup = sga.get_space_group_number()
        # schema 1 recorded the symbol where later schemas record the number
        top = run.top[0].get("spacegroup")
        run.top_spacegroup_match = top in (run.reference_spacegroup, sga.get_space_group_symbol())
    report.summary = summarize(report.runs, report.options.repeats, report.options.budget)
    report.schema_version = SCHEMA_VERSION
    return report


#: budgets at which the success curve is read (and the benchmark's own budget)
CURVE_BUDGETS = (5, 10, 20, 50, 100, 150, 200, 300, 500, 1000, 2000, 5000)


def found_within(run: BenchRunDoc, budget: int) -> bool:
    """The run found the reference (in the top-k when it ended), its first match within
    ``budget`` relaxations: one point of the success curve."""
    return run.found and run.first_found is not None and run.first_found <= budget


def success_curve(runs: list[BenchRunDoc], budget: int) -> list[dict[str, Any]]:
    """Success rate against budget: at each budget ``b`` (the :data:`CURVE_BUDGETS` below the
    benchmark's, and its own), the share of runs that found the reference (in the top-k when
    they ended) within ``b`` relaxations (``first_found <= b``)."""
    budgets = sorted({b for b in CURVE_BUDGETS if b < budget} | {budget})
    out = []
    for b in budgets:
        n = sum(1 for r in runs if found_within(r, b))
        out.append({"budget": b, "found": n, "runs": len(runs),
                    "success_rate": round(n / len(runs), 3) if runs else None})  # fmt: skip
    return out


def summarize(runs: list[BenchRunDoc], repeats: int, budget: int | None = None) -> dict[str, Any]:
    """Success rate, median relaxations to success and the spread over repeats.

    ``search_only`` and ``lookup`` split the runs by whether the prototype or template library
    held the reference's structure type (:func:`library_match`): only the first measure a
    search. ``template_lookup`` are the lookups the template library made possible,
    ``leave_one_out`` the runs whose template library lost the reference's own type.
    ``top_spacegroup_matches``: runs whose top-ranked structure has the reference's space
    group; ``success_curve``: :func:`success_curve` at ``budget`` (default: the most
    relaxations any run spent).
    """
    found = [r for r in runs if r.found]
    to_success = [r.first_found for r in found if r.first_found is not None]
    per_entry: dict[str, dict[str, Any]] = {}
    for r in runs:
        e = per_entry.setdefault(r.formula, {"found": 0, "runs": 0, "first_found": [], "ranks": []})
        e["runs"] += 1
        e["found"] += int(r.found)
        e["first_found"].append(r.first_found)
        e["ranks"].append(r.rank)
    entries_found = sum(1 for e in per_entry.values() if e["found"] == e["runs"])
    return {
        "runs": len(runs),
        "runs_found": len(found),
        "success_rate": round(len(found) / len(runs), 3) if runs else None,
        "entries": len(per_entry),
        "entries_found_every_repeat": entries_found,
        "entries_found_at_least_once": sum(1 for e in per_entry.values() if e["found"]),
        "median_relaxations_to_success": statistics.median(to_success) if to_success else None,
        "relaxations_total": sum(r.relaxations for r in runs),
        "errors": sum(1 for r in runs if r.error),
        "repeats": repeats,
        "per_entry": per_entry,
        "search_only": _rates([r for r in runs if r.reference_in_library is None]),
        "lookup": _rates([r for r in runs if r.reference_in_library is not None]),
        "template_lookup": _rates(
            [r for r in runs if (r.reference_in_library or "").startswith("template:")]
        ),
        "leave_one_out": _rates([r for r in runs if r.left_out]),
        "top_spacegroup_matches": sum(1 for r in runs if r.top_spacegroup_match),
        "success_curve": success_curve(
            runs, budget or max((r.relaxations for r in runs), default=0) or 1
        ),
    }
