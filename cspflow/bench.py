"""CSP benchmark: how often an MLIP-only search finds known structures, and at what cost.

For each entry of a benchmark set (composition + reference structure file) an MLIP-only campaign
(``dft.engine: none``) runs through the real machinery (FireWorks + local workers) on a fresh
database of a dedicated embedded server in a temporary directory, which is removed afterwards.
The search is told the composition and ``max_atoms`` only: never the reference's space group,
cell or prototype (the set's ``prototype``/``spacegroup`` fields are documentation).

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

The set file (YAML)::

    name: dev_set
    match: {ltol: 0.2, stol: 0.3, angle_tol: 5}
    top_k: 5
    entries:
    - composition: NaCl
      reference: dev/NaCl.cif      # relative to the set file
      max_atoms: 8                 # optional; default max(8, 2 x primitive cell atoms)
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cspflow.errors import CspflowError

__all__ = [
    "MatchSpec",
    "BenchEntry",
    "BenchSet",
    "BenchOptions",
    "BenchRunDoc",
    "BenchReportDoc",
    "load_set",
    "default_max_atoms",
    "plan_iterations",
    "bench_campaign_spec",
    "evaluate_run",
    "summarize",
    "bench_server",
    "run_benchmark",
]

SCHEMA_VERSION = 1
#: sources a benchmark may use ("external" would read user files: it could be handed the answer)
BENCH_SOURCES = ("random_symmetric", "prototype", "mutation")


class MatchSpec(BaseModel):
    """StructureMatcher tolerances of a set."""

    model_config = ConfigDict(extra="forbid")

    ltol: float = Field(0.2, gt=0, description="Fractional length tolerance.")
    stol: float = Field(0.3, gt=0, description="Site tolerance (fraction of (V/n)^(1/3)).")
    angle_tol: float = Field(5.0, gt=0, description="Angle tolerance (degrees).")


class BenchEntry(BaseModel):
    """One entry of a set; fields other than these (prototype, spacegroup, ...) are ignored."""

    model_config = ConfigDict(extra="allow")

    composition: str = Field(description="Formula to search.")
    reference: str = Field(description="Reference structure file, relative to the set file.")
    max_atoms: int | None = Field(None, ge=1, description="Largest cell searched.")


class BenchSet(BaseModel):
    """A benchmark set as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("bench", description="Name of the set.")
    match: MatchSpec = Field(default_factory=MatchSpec)
    top_k: int = Field(5, ge=1, description="A reference counts as found within this rank.")
    entries: list[BenchEntry] = Field(min_length=1)


class PreparedEntry(BaseModel):
    """An entry checked and resolved: formula, reference structure, max_atoms."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    formula: str
    reference_path: Path
    reference: Any  # pymatgen Structure
    max_atoms: int


class BenchOptions(BaseModel):
    """How every entry is searched."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("chgnet", description="MLIP spec: chgnet or mace:PATH.")
    sources: dict[str, float] = Field(
        default_factory=lambda: {"random_symmetric": 1.0}, description="Generator -> weight."
    )
    budget: int = Field(200, ge=1, description="Relaxations per entry and repeat.")
    per_iteration: int | None = Field(
        None, ge=1, description="Candidates per iteration (default: budget split in <= 20s)."
    )
    repeats: int = Field(1, ge=1, description="Independent runs per entry (different seeds).")
    seed: int = Field(0, ge=0, description="Base seed; repeat r uses seed + 1000 r.")
    top_k: int | None = Field(None, ge=1, description="Overrides the set's top_k.")
    max_steps: int = Field(300, ge=1, description="Per-candidate optimizer step limit.")
    until_found: bool = Field(
        False, description="End an entry's search after the iteration that put the reference "
        "in the top-k (USPEX-style: relaxations to success), instead of spending the budget.",
    )  # fmt: skip
    workers: int = Field(1, ge=1, description="Campaigns run at once (each its own workers).")


class BenchRunDoc(BaseModel):
    """One campaign of the benchmark: one entry, one repeat."""

    schema_version: int = SCHEMA_VERSION
    formula: str = Field(description="Composition searched.")
    reference: str = Field(description="Reference structure file.")
    repeat: int = Field(description="Repeat index (0-based).")
    seed: int = Field(description="Generation seed of the campaign.")
    max_atoms: int = Field(description="Largest cell searched.")
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
    best_energy_per_atom: float | None = Field(None, description="Lowest MLIP energy (eV/atom).")
    reference_delta_mev: float | None = Field(
        None, description="Energy of the matched reference above the lowest (meV/atom)."
    )
    top: list[dict[str, Any]] = Field(
        default_factory=list, description="Top-k unique structures: id, spacegroup, nsites, energy."
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
    set_file: str
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


# -- input ---------------------------------------------------------------------------------


def default_max_atoms(reference: Any) -> int:
    """Twice the reference's primitive cell, and at least 8 atoms."""
    return max(8, 2 * len(reference.get_primitive_structure()))


def _formula(text: str) -> str:
    from cspflow.schemas.campaign import _check_formula

    try:
        return _check_formula(str(text))
    except ValueError as exc:
        raise CspflowError(f"{exc}") from None


def load_set(
    path: str | Path, only: list[str] | None = None
) -> tuple[BenchSet, list[PreparedEntry]]:
    """Read and check a set file; every reference must be readable and of its composition.

    Raises
    ------
    CspflowError
        Missing or malformed file, an unknown element, an unreadable reference, or ``only``
        naming a composition that is not in the set.
    """
    import yaml
    from pydantic import ValidationError

    from cspflow.chem import read_structures

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CspflowError(f"cannot read benchmark set {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise CspflowError(f"{path}: malformed YAML") from None
    try:
        bset = BenchSet.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise CspflowError(f"{path}: {loc}: {err['msg']}") from None
    wanted = {_formula(o) for o in only} if only else None
    prepared = []
    for i, entry in enumerate(bset.entries):
        try:
            formula = _formula(entry.composition)
        except CspflowError as exc:
            raise CspflowError(f"{path}: entries.{i}: {exc}") from None
        if wanted is not None and formula not in wanted:
            continue
        ref_path = (path.parent / entry.reference).resolve()
        try:
            refs = read_structures(ref_path)
        except CspflowError as exc:
            raise CspflowError(
                f"{path}: entries.{i} ({formula}): cannot read reference: {exc}"
            ) from None
        if len(refs) != 1:
            raise CspflowError(
                f"{path}: entries.{i} ({formula}): reference {ref_path} holds {len(refs)} "
                "structures; give a file with one"
            )
        ref = refs[0]
        if ref.composition.reduced_formula != formula:
            raise CspflowError(
                f"{path}: entries.{i}: reference {ref_path.name} is "
                f"{ref.composition.reduced_formula}, not {formula}"
            )
        max_atoms = entry.max_atoms or default_max_atoms(ref)
        prepared.append(
            PreparedEntry(
                formula=formula, reference_path=ref_path, reference=ref, max_atoms=max_atoms
            )
        )
    if wanted is not None:
        missing = sorted(wanted - {e.formula for e in prepared})
        if missing:
            known = ", ".join(_formula(e.composition) for e in bset.entries)
            raise CspflowError(f"--only: {', '.join(missing)} not in {path} (it has {known})")
    return bset, prepared


def check_options(options: BenchOptions) -> None:
    """Reject sources and models a benchmark cannot use, before anything starts."""
    from cspflow.mlip import parse_model_spec

    bad = sorted(set(options.sources) - set(BENCH_SOURCES))
    if bad:
        raise CspflowError(
            f"unknown or unusable source(s) {bad} for a benchmark; choose from {list(BENCH_SOURCES)}"
        )
    if sum(options.sources.values()) <= 0 or any(w < 0 for w in options.sources.values()):
        raise CspflowError("source weights must be >= 0 and not all zero")
    spec = parse_model_spec(options.model)
    if spec.kind == "registry":
        raise CspflowError(
            "registry models are not in the benchmark's own database; pass --model mace:PATH"
        )


# -- one campaign ----------------------------------------------------------------------------


def plan_iterations(
    budget: int, per_iteration: int | None = None, cap: int = 20
) -> tuple[int, int]:
    """Split a relaxation budget into (iterations, per_iteration) without exceeding it.

    Iterations hold at most ``cap`` candidates (so mutation has parents and progress shows);
    ``per_iteration * iterations <= budget``, short of it by less than ``iterations``.
    """
    if per_iteration is not None:
        per = min(per_iteration, budget)
        return max(1, budget // per), per
    n = -(-budget // cap)
    return n, budget // n


def bench_campaign_spec(name: str, entry: PreparedEntry, options: BenchOptions, seed: int) -> Any:
    """The MLIP-only campaign for one entry: composition and max_atoms only, no DFT."""
    from cspflow.schemas.campaign import CampaignSpec

    iterations, per = plan_iterations(options.budget, options.per_iteration)
    return CampaignSpec.model_validate(
        {
            "name": name,
            "compositions": [entry.formula],
            "max_atoms": entry.max_atoms,
            "generate": {"per_iteration": per, "sources": dict(options.sources), "seed": seed},
            "prerelax": {
                "model": options.model,
                "max_steps": options.max_steps,
                "batch_size": max(per, 1),
            },  # fmt: skip
            "select": {"top_k": 0},
            "dft": {"engine": "none"},
            # no hull-improvement stop: the budget alone ends the search
            "stop": {"max_iterations": iterations, "patience": iterations},
        }
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
        ``best_energy_per_atom``, ``reference_delta_mev`` and ``top`` (the top-k unique).
    """
    sm = _matcher(match)

    def good(r: dict[str, Any]) -> bool:
        return r["energy_per_atom"] is not None and r["structure"] is not None

    ok = [r for r in relaxed if good(r)]
    first_found = None
    for i, r in enumerate(relaxed, start=1):
        if good(r) and sm.fit(reference, r["structure"]):
            first_found = i
            break
    # unique structures by energy: the campaign's dedup, then the set's matcher over what is left
    unique: list[dict[str, Any]] = []
    for r in sorted(
        (r for r in ok if not r.get("duplicate_of")), key=lambda r: r["energy_per_atom"]
    ):
        if not any(sm.fit(u["structure"], r["structure"]) for u in unique[-20:]):
            unique.append(r)
    rank = None
    if first_found is not None:
        rank = next((k for k, u in enumerate(unique, 1) if sm.fit(reference, u["structure"])), None)
    best = unique[0]["energy_per_atom"] if unique else None
    delta = None
    if rank is not None and best is not None:
        delta = round((unique[rank - 1]["energy_per_atom"] - best) * 1000, 1)
    top = [
        {"rank": k, "candidate_id": u["candidate_id"], "spacegroup": u.get("spacegroup"),
         "nsites": u.get("nsites"), "energy_per_atom": u["energy_per_atom"],
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
        "best_energy_per_atom": best,
        "reference_delta_mev": delta,
        "top": top,
    }


def relaxed_candidates(db: Any, campaign: str) -> list[dict[str, Any]]:
    """The campaign's relaxed candidates in generation order, as :func:`evaluate_run` takes them."""
    from pymatgen.core import Structure

    rows = []
    query = {"campaign": campaign, "relaxed.mlip": {"$exists": True}}
    for d in db.candidates.find(query).sort([("iteration", 1), ("created_at", 1), ("_id", 1)]):
        mlip = (d.get("relaxed") or {}).get("mlip") or {}
        failed = d.get("status") == "failed" or mlip.get("structure") is None
        rows.append(
            {
                "candidate_id": d["candidate_id"],
                "structure": None if failed else Structure.from_dict(mlip["structure"]),
                "energy_per_atom": None if failed else (d.get("energy_per_atom") or {}).get("mlip"),
                "duplicate_of": d.get("duplicate_of"),
                "spacegroup": mlip.get("spacegroup"),
                "nsites": d.get("nsites"),
            }
        )
    return rows


def count_relaxed(db: Any, campaign: str) -> int:
    """Candidates of the campaign relaxed so far (progress)."""
    return db.candidates.count_documents({"campaign": campaign, "relaxed.mlip": {"$exists": True}})


# -- the server and the whole benchmark ------------------------------------------------------


_PREFIX = "cspflow-bench-csp-"


def _sweep_killed() -> None:
    """Remove data dirs left by benchmarks that were killed (their server's pid is dead)."""
    from cspflow.db import _pid_alive

    for d in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            pid = int((d / "secantusd.pid").read_text().strip())
        except (OSError, ValueError):
            continue  # starting up, or already stopped cleanly
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def bench_server(base: Any = None) -> Iterator[Any]:
    """A dedicated embedded server in a fresh temporary data dir; both gone on exit.

    The server is bound to this process (it dies with it even on SIGKILL) and is stopped and
    its directory removed on any exit, including Ctrl-C; the directory of a benchmark killed
    with SIGKILL is removed by the next benchmark. Yields the benchmark's settings
    (``db_name`` is set per campaign by the caller) and the server's
    :class:`~cspflow.db.ServerInfo`.
    """
    from cspflow.db import start_server, stop_server
    from cspflow.settings import CspflowSettings, get_settings

    base = base or get_settings()
    _sweep_killed()
    data_dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
    settings = CspflowSettings(
        **{
            **base.model_dump(exclude={"db_uri", "data_dir", "db_port", "work_dir", "db_name"}),
            "db_uri": None,
            "data_dir": data_dir,
            "db_port": 0,
            "db_name": "bench",
            "work_dir": data_dir / "runs",  # else CSPFLOW_WORK_DIR would put runs in the user's
            # this throwaway database need not survive a crash; fsync per commit costs 3x
            "db_sync_on_commit": False,
        }
    )
    try:
        info = start_server(settings, bound_to_caller=True)
        yield settings, info
    finally:
        try:
            stop_server(settings)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def run_entry(
    entry: PreparedEntry,
    repeat: int,
    index: int,
    settings: Any,
    options: BenchOptions,
    top_k: int,
    match: MatchSpec,
    on_progress: Callable[[int], None] | None = None,
) -> BenchRunDoc:
    """Run one campaign on its own fresh database of the benchmark server and score it."""
    from cspflow.scheduler import run_campaign_locally, submit_campaign
    from cspflow.store import get_database

    seed = options.seed + 1000 * repeat
    name = f"bench-{entry.formula}-r{repeat}"
    run_settings = settings.model_copy(update={"db_name": f"bench_{index}_{repeat}"})
    spec = bench_campaign_spec(name, entry, options, seed)
    db = get_database(run_settings)
    t0 = time.monotonic()
    error = None
    state = {"relaxed": 0, "stopped": False}

    def poll(nodes: Any, elapsed: float) -> None:
        n = count_relaxed(db, name)
        if on_progress:
            on_progress(n)
        if options.until_found and n != state["relaxed"] and not state["stopped"]:
            state["relaxed"] = n
            if evaluate_run(entry.reference, relaxed_candidates(db, name), top_k, match)["found"]:
                # decide ends the campaign after this iteration (its batch is relaxed at once)
                db.campaigns.update_one({"name": name}, {"$set": {"state": "paused"}})
                state["stopped"] = True

    try:
        _, created, nodes = submit_campaign(spec, run_settings)
        run_campaign_locally(spec, run_settings, nodes, created=created, on_poll=poll)
    except CspflowError as exc:
        error = str(exc)
    wall = time.monotonic() - t0
    scores = evaluate_run(entry.reference, relaxed_candidates(db, name), top_k, match)
    if on_progress:
        on_progress(scores["relaxations"])
    return BenchRunDoc(
        formula=entry.formula,
        reference=str(entry.reference_path),
        repeat=repeat,
        seed=seed,
        max_atoms=entry.max_atoms,
        iterations=spec.stop.max_iterations,
        per_iteration=spec.generate.per_iteration,
        wall_s=round(wall, 1),
        error=error,
        stopped_early=state["stopped"] and scores_budget_left(spec, scores),
        **scores,
    )


def scores_budget_left(spec: Any, scores: dict[str, Any]) -> bool:
    """Whether the search ended before spending its planned relaxations."""
    return scores["relaxations"] < spec.stop.max_iterations * spec.generate.per_iteration


def summarize(runs: list[BenchRunDoc], repeats: int) -> dict[str, Any]:
    """Success rate, median relaxations to success and the spread over repeats."""
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
    }


def _run_parallel(
    tasks: list[tuple[int, int, PreparedEntry]],
    settings: Any,
    options: BenchOptions,
    top_k: int,
    match: MatchSpec,
    on_run_end: Callable[[BenchRunDoc], None] | None,
) -> list[BenchRunDoc]:
    """``options.workers`` campaigns at once (threads waiting on worker processes)."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # each campaign runs a cpu and a gpu worker: share the cores instead of oversubscribing
    threads = max(1, (os.cpu_count() or 1) // (2 * options.workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    lock = threading.Lock()

    def one(task: tuple[int, int, PreparedEntry]) -> BenchRunDoc:
        repeat, index, entry = task
        run = run_entry(entry, repeat, index, settings, options, top_k, match)
        if on_run_end:
            with lock:
                on_run_end(run)
        return run

    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        return list(pool.map(one, tasks))  # in task order, whichever finished first


def run_benchmark(
    set_file: str | Path,
    options: BenchOptions,
    only: list[str] | None = None,
    on_run_start: Callable[[PreparedEntry, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_run_end: Callable[[BenchRunDoc], None] | None = None,
) -> BenchReportDoc:
    """Check the set and options, then run every entry x repeat on a dedicated server.

    Bad input raises :class:`CspflowError` before any server or campaign starts.
    """
    import os
    import platform

    bset, entries = load_set(set_file, only)
    check_options(options)
    top_k = options.top_k or bset.top_k
    report = BenchReportDoc(
        set_name=bset.name, set_file=str(Path(set_file).resolve()), options=options,
        top_k=top_k, match=bset.match,
        host={"hostname": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "platform": platform.platform()},
    )  # fmt: skip
    t0 = time.monotonic()
    tasks = [(repeat, index, entry) for repeat in range(options.repeats)
             for index, entry in enumerate(entries)]  # fmt: skip
    with bench_server() as (settings, info):
        report.server = {"pid": info.pid, "uri": info.uri, "data_dir": str(info.data_dir)}
        if options.workers == 1:
            for repeat, index, entry in tasks:
                if on_run_start:
                    on_run_start(entry, repeat)
                run = run_entry(entry, repeat, index, settings, options, top_k, bset.match,
                                on_progress)  # fmt: skip
                report.runs.append(run)
                if on_run_end:
                    on_run_end(run)
        else:
            report.runs.extend(_run_parallel(tasks, settings, options, top_k, bset.match,
                                             on_run_end))  # fmt: skip
    report.total_s = round(time.monotonic() - t0, 1)
    report.summary = summarize(report.runs, options.repeats)
    return report
