"""Re-screen of a learning campaign: does each model rank the DFT ground state first?

After a campaign with ``learn.enabled`` (e.g. ``workflows/hfo2_learning_demo.yaml``), relaxes
every unique candidate the campaign generated, from its generated structure, with CHGNet 0.3.0
and with every model the campaign's learning rounds registered (promoted or not,
``registry:ID``), through ``cspflow relax``'s path
(:func:`cspflow.prerelax.relax.relax_structures`, its defaults, fmax 0.05, 500 steps; FIRE when the
README's figures were measured, BFGS with cell_factor 1 since), and prints per
model the rank of the DFT ground state: the lowest DFT energy per atom among the campaign's
candidates, matched to each relaxed structure with pymatgen's StructureMatcher (so a
candidate that relaxes into the same minimum counts as the ground state too). Candidates that
reached DFT are re-screened with the others: the question is whether the model would have put
the ground state first had it screened the campaign from the start.

The campaign's own re-screen job only re-ranks candidates without DFT (they still need a
decision); this script is the measurement behind the README's learning table.

    CSPFLOW_DATA_DIR=... python bench/learn_demo.py hfo2-active-learning [--json]

Errors a user can cause (an unknown campaign, one without DFT results) print one line
``error: ...`` on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


class InputError(Exception):
    """Bad input: one line on stderr, exit 2."""


def campaign_candidates(db: Any, campaign: str) -> tuple[list[dict], dict]:
    """The campaign's unique usable candidates and the one with the lowest DFT energy."""
    from cspflow.store import candidates

    if db["campaigns"].find_one({"name": campaign}) is None:
        raise InputError(f"no campaign named {campaign!r} in this database")
    docs = [
        d
        for d in db["candidates"].find({"campaign": campaign})
        if d.get("duplicate_of") is None and d.get("status") != "failed"
    ]
    labelled = [(candidates.energy_at(d, "dft"), d) for d in docs]
    labelled = [(e, d) for e, d in labelled if e is not None]
    if not labelled:
        raise InputError(f"campaign {campaign!r} has no converged DFT result to compare with")
    return docs, min(labelled, key=lambda p: p[0])[1]


def rescreen(db: Any, campaign: str, fmax: float = 0.05) -> dict[str, Any]:
    """Relax the campaign's candidates with CHGNet and each registered model; rank."""
    from learn_case import ranks  # bench/ is on sys.path when run as a script
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures
    from cspflow.store import candidates

    docs, ground = campaign_candidates(db, campaign)
    ground_dft = Structure.from_dict(ground["relaxed"]["dft"]["structure"])
    starts = [Structure.from_dict(d["structure"]) for d in docs]
    rounds = sorted(db["models"].find({"campaign": campaign}), key=lambda m: m["created_at"])
    specs = ["chgnet"] + [f"registry:{m['model_id']}" for m in rounds if not m.get("committee_of")]
    matcher = StructureMatcher()
    table: dict[str, Any] = {
        "campaign": campaign,
        "ground_state": {
            "candidate_id": ground["candidate_id"],
            "spacegroup": ground["relaxed"]["dft"].get("spacegroup") or ground.get("spacegroup"),
            "source": ground.get("source"),
            "template": (ground.get("params") or {}).get("template_name"),
            "dft_energy_per_atom": candidates.energy_at(ground, "dft"),
        },
        "candidates": len(docs),
        "models": {},
    }
    for spec in specs:
        t0 = time.time()
        model = load_model(spec, db=db)
        outcomes = relax_structures(starts, model, fmax=fmax, max_steps=500)
        energies = [o.energy_per_atom if o.ok else None for o in outcomes]
        ranked = ranks(energies)
        same = [
            o.ok and o.structure is not None and matcher.fit(o.structure, ground_dft)
            for o in outcomes
        ]
        gs_ranks = [r for r, s in zip(ranked, same, strict=True) if s and r is not None]
        best, i_best = min((e, i) for i, e in enumerate(energies) if e is not None)
        e_ground = [e for e, s in zip(energies, same, strict=True) if s and e is not None]
        table["models"][spec] = {
            "ground_state_rank": min(gs_ranks) if gs_ranks else None,
            "rank1_spacegroup": outcomes[i_best].spacegroup_number,
            "rank1_is_ground_state": bool(same[i_best]),
            "ground_state_above_rank1_mev_per_atom": (
                round(1000 * (min(e_ground) - best), 1) if e_ground else None
            ),
            "relaxed": sum(e is not None for e in energies),
            "wall_s": round(time.time() - t0, 1),
        }
        print(f"{spec}: ground state rank {table['models'][spec]['ground_state_rank']}",
              file=sys.stderr)  # fmt: skip
    return table


def render(table: dict[str, Any]) -> str:
    g = table["ground_state"]
    lines = [
        f"re-screen of {table['candidates']} candidates of {table['campaign']}; DFT ground state: "
        f"space group {g['spacegroup']} ({g['template'] or g['source']}), "
        f"{g['dft_energy_per_atom']:.4f} eV/atom",
        "",
        "| model | ground state rank | rank 1 (space group) | ground state above rank 1 "
        "(meV/atom) | relaxed | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for spec, m in table["models"].items():
        above = m["ground_state_above_rank1_mev_per_atom"]
        lines.append(
            f"| {spec} | {m['ground_state_rank'] or '-'} | {m['rank1_spacegroup']} | "
            f"{'-' if above is None else above} | {m['relaxed']} | {m['wall_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("campaign")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    from cspflow.store import get_database

    try:
        table = rescreen(get_database(), args.campaign)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(table, indent=1) if args.json else render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
