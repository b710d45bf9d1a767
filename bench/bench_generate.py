"""Throughput of generation + deduplication, and dedup lookup time vs stored structures.

Runs against a private embedded SecantusDB server (started in a temporary directory). Prints
one table. Stored sets of 1e3, 1e4 and 1e5 candidates are filled with synthetic documents:
fingerprints mixed from pairs of real PyXtal SrTiO3 structures plus noise, space groups and cell
sizes drawn the way the random_symmetric source draws them, real structures attached. The lookups are real
``find_duplicate`` calls for fresh structures (misses) and for stored ones rotated (hits).

    .venv/bin/python bench/bench_generate.py [--sizes 1000,10000,100000] [--lookups 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np


def _pool(n: int, seed: int):
    from cspflow.generate.composition import parse_target
    from cspflow.generate.fingerprint import fingerprint
    from cspflow.generate.sources import RandomSymmetric, SourceContext

    target = parse_target("SrTiO3", 20)
    out, s = [], seed
    while len(out) < n:
        g = RandomSymmetric().make(target, s, SourceContext())
        s += 1
        if g is not None:
            out.append((g.structure, fingerprint(g.structure)))
    return out


def _synthetic_docs(pool, count: int, rng: np.random.Generator, start: int):
    from pyxtal.symmetry import Group

    from cspflow.generate.fingerprint import Fingerprint
    from cspflow.generate.sources import compatible_space_groups

    docs = []
    for i in range(count):
        structure, fp = pool[int(rng.integers(len(pool)))]
        _, other = pool[int(rng.integers(len(pool)))]
        w = float(rng.uniform())
        fu = int(rng.integers(1, 5))
        sg = int(rng.choice(compatible_space_groups((fu, fu, 3 * fu))))
        centring = {"P": 1, "I": 2, "F": 4, "C": 2, "A": 2, "R": 3}[Group(sg).symbol[0]]
        # A continuum of fingerprints between real ones, so stored structures are all distinct.
        vec = w * fp.vector + (1 - w) * other.vector + rng.normal(0, 0.1, fp.vector.size)
        sfp = Fingerprint(fp.formula, fp.chemsys, sg, max(5 * fu // centring, 1), vec)
        docs.append({
            "candidate_id": f"syn-{start + i}", "formula": fp.formula, "chemsys": fp.chemsys,
            "structure": structure.as_dict(), "spacegroup": sg,
            "fingerprint": [round(float(x), 5) for x in vec],
            "fingerprint_hash": f"syn-{start + i}", "bucket": sfp.buckets(),
            "status": "generated", "energy_per_atom": {"mlip": None, "dft": None},
        })  # fmt: skip
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--batch", type=int, default=60, help="candidates for the throughput row")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from pymatgen.core.operations import SymmOp

    from cspflow.db import start_server, stop_server
    from cspflow.generate.batch import generate_batch
    from cspflow.generate.composition import parse_target
    from cspflow.generate.dedup import MemoryIndex, MongoIndex, find_duplicate, structures_match
    from cspflow.settings import CspflowSettings
    from cspflow.store import _client_for, ensure_indexes

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
        fit_times = []
        for a, b in zip(pool[:20], pool[1:21], strict=True):
            t0 = time.perf_counter()
            structures_match(a[0], b[0])
            fit_times.append(time.perf_counter() - t0)
        fit = statistics.median(fit_times)
        db.candidates.delete_many({})
        stored = 0
        for size in [int(x) for x in args.sizes.split(",")]:
            t0 = time.perf_counter()
            while stored < size:
                k = min(5000, size - stored)
                db.candidates.insert_many(_synthetic_docs(pool, k, rng, stored), ordered=False)
                stored += k
            fill = time.perf_counter() - t0
            # real stored structures to hit: register some pool members under new ids
            hits = []
            for j, (s, _) in enumerate(pool[: args.lookups // 2]):
                from cspflow.generate.dedup import register

                cid, _ = register(db, s, source="bench", candidate_id=f"real-{size}-{j}")
                r = s.copy()
                r.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 40.0))
                hits.append((cid, r))
            miss_t, hit_t, found = [], [], 0
            for s in fresh:
                t0 = time.perf_counter()
                find_duplicate(db, s)
                miss_t.append(time.perf_counter() - t0)
            for cid, s in hits:
                t0 = time.perf_counter()
                got = find_duplicate(db, s)
                hit_t.append(time.perf_counter() - t0)
                found += got == cid
            med = statistics.median(miss_t + hit_t) * 1e3
            p90 = float(np.percentile(miss_t + hit_t, 90)) * 1e3
            rows.append((
                f"lookup, {db.candidates.estimated_document_count():,} stored",
                f"median {med:.1f} ms (p90 {p90:.1f})",
                f"new {statistics.median(miss_t) * 1e3:.1f} ms, duplicate "
                f"{statistics.median(hit_t) * 1e3:.1f} ms ({found}/{len(hits)} found); "
                f"pairwise StructureMatcher would take ~{fit * size:.0f} s; fill {fill:.0f} s",
            ))  # fmt: skip
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        head = ("measure", "result", "detail")
        print("  ".join(h.ljust(w) for h, w in zip(head, width, strict=True)))
        print("  ".join("-" * w for w in width))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
        print(f"(StructureMatcher.fit median {fit * 1e3:.1f} ms per pair; SrTiO3, max 20 atoms)")
    finally:
        stop_server(settings)


if __name__ == "__main__":
    main()
