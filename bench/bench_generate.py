"""Throughput of generation + deduplication, and dedup lookup time vs stored structures.

Runs against a private embedded SecantusDB server (started in a temporary directory). Prints
one table. Stored sets of 1e3, 1e4 and 1e5 candidates are filled with synthetic documents:
fingerprints mixed from pairs of real PyXtal SrTiO3 structures plus noise, space groups and cell
sizes drawn the way the random_symmetric source draws them, a real structure attached, written
with ``insert_many`` into ``candidates`` and ``fingerprints``. The lookups are real
``find_duplicate`` calls for fresh structures (misses) and for stored ones rotated (hits),
registered through ``register``. Each size has its own database, and the lookups are
interleaved (each query against every size in turn, ``--rounds`` times), so a change of machine
load during the run affects all sizes alike.

    .venv/bin/python bench/bench_generate.py [--sizes 1000,10000,100000] [--lookups 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np


def _pool(n: int, seed: int):
    from cspflow.dedup.fingerprint import fingerprint
    from cspflow.generate.composition import parse_target
    from cspflow.generate.sources import RandomSymmetric, SourceContext

    target = parse_target("SrTiO3", 20)
    out, s = [], seed
    while len(out) < n:
        g = RandomSymmetric().make(target, s, SourceContext())
        s += 1
        if g is not None:
            out.append((g.structure, fingerprint(g.structure)))
    return out


_CELLS = None


def _synthetic_docs(pool, count: int, rng: np.random.Generator, start: int, near=None):
    """``count`` fingerprints documents and their candidates documents, built in bulk.

    With ``near`` (fingerprint vectors of the structures that will be looked up), only the
    candidates documents a lookup can fetch are returned: those within FP_TOLERANCE of one.
    """
    from bson import Binary
    from pyxtal.symmetry import Group

    from cspflow.dedup.fingerprint import Fingerprint
    from cspflow.dedup.match import cell_document, reduced_cell
    from cspflow.generate.sources import compatible_space_groups

    formula, chemsys = pool[0][1].formula, pool[0][1].chemsys
    global _CELLS
    if _CELLS is None:  # the reduced cell of each attached structure, as register stores it
        _CELLS = [cell_document(reduced_cell(s)) for s, _ in pool]
    groups = {fu: compatible_space_groups((fu, fu, 3 * fu)) for fu in range(1, 5)}
    centring: dict[int, int] = {}
    dicts = [s.as_dict() for s, _ in pool]  # shared: the server stores a copy per document
    a, b = rng.integers(len(pool), size=count), rng.integers(len(pool), size=count)
    w = rng.uniform(size=(count, 1))
    vecs = np.stack([pool[i][1].vector for i in a]) * w + np.stack(
        [pool[i][1].vector for i in b]
    ) * (1 - w)
    # A continuum of fingerprints between real ones, so stored structures are all distinct.
    vecs += rng.normal(0, 0.1, vecs.shape)
    from cspflow.dedup.fingerprint import FP_TOLERANCE

    keep = np.ones(count, dtype=bool)
    if near is not None:
        d2 = (vecs**2).sum(1)[:, None] + (near**2).sum(1)[None, :] - 2 * vecs @ near.T
        keep = np.sqrt(np.maximum(d2, 0) / vecs.shape[1]).min(axis=1) <= FP_TOLERANCE + 0.05
    cands, fps = [], []
    for i in range(count):
        cid = f"syn-{start + i}"
        fu = int(rng.integers(1, 5))
        sg = int(rng.choice(groups[fu]))
        if sg not in centring:
            centring[sg] = {"P": 1, "I": 2, "F": 4, "C": 2, "A": 2, "R": 3}[Group(sg).symbol[0]]
        nprim = max(5 * fu // centring[sg], 1)
        sfp = Fingerprint(formula, chemsys, sg, nprim, vecs[i])
        keys = sfp.buckets()
        structure = dicts[int(a[i])]
        if keep[i]:
            cands.append({
                "candidate_id": cid, "formula": formula, "chemsys": chemsys,
                "nsites": len(structure["sites"]), "structure": structure, "spacegroup": sg,
                "fingerprint": np.round(vecs[i], 5).tolist(), "fingerprint_hash": cid,
                "bucket": keys, "source": "synthetic", "status": "generated",
                "energy_per_atom": {"mlip": None, "dft": None},
            })  # fmt: skip
        fps.append({
            "_id": f"{cid}|initial", "candidate_id": cid, "level": "initial",
            "formula": formula, "chemsys": chemsys, "spacegroup": sg, "nprim": nprim,
            "nsites": len(structure["sites"]), "bucket": keys,
            "fp": Binary(vecs[i].astype("<f4").tobytes()), "cell": _CELLS[int(a[i])],
        })  # fmt: skip
    return cands, fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=2, help="passes over the lookups (interleaved by size)"
    )
    parser.add_argument("--batch", type=int, default=60, help="candidates for the throughput row")
    parser.add_argument(
        "--all-candidates",
        action="store_true",
        help="also write every synthetic candidates document (with its structure); by default "
        "only those a lookup can fetch are written (the fill is then ~3x faster)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from pymatgen.core.operations import SymmOp

    from cspflow.db import start_server, stop_server
    from cspflow.dedup.fingerprint import fingerprint
    from cspflow.dedup.index import MemoryIndex, MongoIndex, find_duplicate
    from cspflow.dedup.match import structures_match
    from cspflow.generate.batch import generate_batch
    from cspflow.generate.composition import parse_target
    from cspflow.settings import CspflowSettings
    from cspflow.store.client import _client_for, ensure_indexes

    load_start = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="cspflow-bench-")
    settings = CspflowSettings(data_dir=tmp, db_uri=None, db_port=0)
    info = start_server(settings)
    try:
        db = _client_for(info.uri, 5000)["bench"]
        ensure_indexes(db)
        target = parse_target("SrTiO3", 20)
        rows = []

        # 1) throughput: generate + dedup, memory index and MongoDB index (one process)
        from cspflow.generate.sources import compatible_space_groups

        for fu in target.fu_counts:  # one-off per composition, not per candidate
            compatible_space_groups(tuple(target.num_ions(fu)))
        for label, index in (("memory", MemoryIndex()), ("mongodb", MongoIndex(db))):
            t0 = time.perf_counter()
            r = generate_batch(target, args.batch, index, seed=1)
            dt = time.perf_counter() - t0
            rows.append((f"generate+dedup ({label} index)", f"{r.summary.n_new / dt:.2f} cand/s",
                         f"{r.summary.n_new} unique of {r.summary.n_attempts} tried, {dt:.1f} s"))  # fmt: skip

        # 2) lookups vs stored size
        rng = np.random.default_rng(0)
        pool = _pool(120, 1000)
        fresh = [s for s, _ in _pool(args.lookups // 2, 50_000)]
        near = None
        if not args.all_candidates:
            near = np.stack([fingerprint(s).vector for s in fresh] +
                            [fp.vector for _, fp in pool[: args.lookups // 2]])  # fmt: skip
        fit_times = []
        for a, b in zip(pool[:20], pool[1:21], strict=True):
            t0 = time.perf_counter()
            structures_match(a[0], b[0])
            fit_times.append(time.perf_counter() - t0)
        fit = statistics.median(fit_times)
        # One database per size, so that the lookups can be interleaved: every query runs
        # against each size in turn, and a change of machine load hits all sizes alike.
        from cspflow.dedup.index import register

        sizes = [int(x) for x in args.sizes.split(",")]
        stores = {}
        for size in sizes:
            sdb = db.client[f"bench_{size}"]
            sdb.drop_collection("candidates")
            sdb.drop_collection("fingerprints")
            ensure_indexes(sdb)
            t0 = time.perf_counter()
            stored = 0
            while stored < size:
                k = min(5000, size - stored)
                cands, fps = _synthetic_docs(pool, k, rng, stored, near)
                if cands:
                    sdb.candidates.insert_many(cands, ordered=False)
                sdb.fingerprints.insert_many(fps, ordered=False)
                stored += k
            fill = time.perf_counter() - t0
            # real stored structures to hit: register some pool members under new ids
            hits = []
            for j, (s, _) in enumerate(pool[: args.lookups // 2]):
                cid, _ = register(sdb, s, source="bench", candidate_id=f"real-{size}-{j}")
                r = s.copy()
                r.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 40.0))
                hits.append((cid, r))
            stores[size] = (sdb, hits, fill)
        miss_t: dict[int, list[float]] = {size: [] for size in sizes}
        hit_t: dict[int, list[float]] = {size: [] for size in sizes}
        found = dict.fromkeys(sizes, 0)
        for _ in range(args.rounds):
            for s in fresh:
                for size in sizes:
                    t0 = time.perf_counter()
                    find_duplicate(stores[size][0], s)
                    miss_t[size].append(time.perf_counter() - t0)
            for j in range(len(stores[sizes[0]][1])):
                for size in sizes:
                    sdb, hits, _ = stores[size]
                    t0 = time.perf_counter()
                    got = find_duplicate(sdb, hits[j][1])
                    hit_t[size].append(time.perf_counter() - t0)
                    found[size] += got == hits[j][0]
        for size in sizes:
            sdb, hits, fill = stores[size]
            read = [
                sdb.fingerprints.count_documents({"bucket": {"$in": fingerprint(s).buckets()}})
                for s in fresh + [r for _, r in hits]
            ]
            both = miss_t[size] + hit_t[size]
            rows.append((
                f"lookup, {sdb.fingerprints.estimated_document_count():,} stored",
                f"median {statistics.median(both) * 1e3:.1f} ms (p90 "
                f"{np.percentile(both, 90) * 1e3:.1f})",
                f"new {statistics.median(miss_t[size]) * 1e3:.1f} ms (p90 "
                f"{np.percentile(miss_t[size], 90) * 1e3:.1f}), duplicate "
                f"{statistics.median(hit_t[size]) * 1e3:.1f} ms (p90 "
                f"{np.percentile(hit_t[size], 90) * 1e3:.1f}; "
                f"{found[size]}/{len(hit_t[size])} found); "
                f"bucket {statistics.median(read):.0f} docs (p90 {np.percentile(read, 90):.0f}); "
                f"pairwise StructureMatcher would take ~{fit * size:.0f} s; fill {fill:.0f} s",
            ))  # fmt: skip
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        head = ("measure", "result", "detail")
        print("  ".join(h.ljust(w) for h, w in zip(head, width, strict=True)))
        print("  ".join("-" * w for w in width))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
        print(f"(StructureMatcher.fit median {fit * 1e3:.1f} ms per pair; SrTiO3, max 20 atoms)")
        print(f"(load average: {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
              f"{os.cpu_count()} cores)")  # fmt: skip
    finally:
        stop_server(settings)


if __name__ == "__main__":
    main()
