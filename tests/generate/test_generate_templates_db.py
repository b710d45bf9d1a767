"""Templates from the database: a new campaign seeds from what an earlier campaign relaxed."""

from __future__ import annotations


def _spinel(a_scale: float = 1.0):
    from cspflow.generate.templates import library_templates

    spinel = next(t for t in library_templates("AB2C4") if t.name == "Spinel").structure.copy()
    spinel.scale_lattice(spinel.volume * a_scale**3)
    return spinel


def _dft(structure, energy_per_atom: float):
    from cspflow.schemas.dft import DftResultDoc

    return DftResultDoc(engine="gpaw", preset="fast", settings_hash="h", status="converged",
                        structure=structure.as_dict(), energy_per_atom=energy_per_atom,
                        energy=energy_per_atom * len(structure), nsites=len(structure))  # fmt: skip


def test_new_ternary_seeds_from_an_earlier_campaigns_dft_structure(db):
    from jobflow import run_locally
    from pymatgen.core import Structure

    from cspflow.dft.stage import write_result
    from cspflow.generate.composition import parse_target
    from cspflow.generate.maker import GenerateMaker
    from cspflow.generate.templates import stored_templates
    from cspflow.schemas.generate import GenerateSettings
    from cspflow.testing import insert_candidate

    # campaign "first" relaxed MgAl2O4 with DFT into a spinel 2% larger than the prototype
    relaxed = _spinel(1.02)
    start = relaxed.copy()
    start.perturb(0.05, 0.0)
    dft_id = insert_candidate(db, start, campaign="first", iteration=3)
    write_result(db, dft_id, _dft(relaxed, -6.1))
    # and pre-relaxed MgGa2O4 with the MLIP only: no template at the default (DFT) level
    mg_ga = _spinel(1.04)
    mg_ga.replace_species({"Al": "Ga"})
    mlip_id = insert_candidate(db, mg_ga, status="prerelaxed", mlip_energy=-5.2,
                               mlip_structure=mg_ga, campaign="first")  # fmt: skip

    target = parse_target("ZnGa2O4", 14)
    assert [t.id for t in stored_templates(db, target)] == [dft_id]
    assert [t.id for t in stored_templates(db, target, "mlip")] == [mlip_id]
    assert stored_templates(db, parse_target("MgAl2O4", 14)) == []  # its own formula: no

    settings = GenerateSettings(per_iteration=3, sources={"template": 1.0})
    job = GenerateMaker(settings=settings, max_atoms=14).make(
        "ZnGa2O4", campaign="second", iteration=0
    )
    summary = run_locally(job, ensure_success=True)[job.uuid][1].output
    assert summary["by_source"] == {"template": 3}
    docs = {d["candidate_id"]: d for d in db.candidates.find({"campaign": "second"})}
    seeded = [d for d in docs.values() if d["parent_ids"] == [dft_id]]
    assert len(seeded) == 1, [d["params"] for d in docs.values()]
    p = seeded[0]["params"]
    assert p["template"] == dft_id and p["template_origin"] == "database"
    assert p["template_name"] == "MgAl2O4"
    assert p["substitution"] == {"Mg": "Zn", "Al": "Ga", "O": "O"}
    s = Structure.from_dict(seeded[0]["structure"])
    assert s.composition.reduced_formula == target.formula and len(s) == 14
    # the AFLOW spinel is the same structure: the stored one ranked first, the library copy
    # was a duplicate, so the spinel candidate descends from the DFT result
    assert not any(d["params"].get("template") == "A2BC4_cF56_227_d_a_e" for d in docs.values())
    assert summary["n_duplicates"] >= 1
    assert not any(mlip_id in d["parent_ids"] for d in docs.values())


def test_results_top_counts_template_structures():
    from cspflow.cli import render

    rows = [{"rank": i, "candidate_id": f"c{i}", "formula": "SrTiO3", "spacegroup": 221,
             "nsites": 5, "level": "mlip", "energy_per_atom": {"mlip": -8.0 + i, "dft": None},
             "e_above_hull": None, "source": src,
             "template": "(Cubic) Perovskite (AB3C_cP5_221_a_c_b)" if src == "template" else None}
            for i, src in enumerate(["template", "random_symmetric", "template"], 1)]  # fmt: skip
    table = render.top_table(rows, "t")
    assert table.caption == "2 of these 3 came from templates"


def test_iteration_summary_counts_templates_among_the_best(db):
    from pymatgen.core import Lattice, Structure

    from cspflow.campaign.state import iteration_summary
    from cspflow.testing import insert_candidate

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ids = [insert_candidate(db, s, status="prerelaxed", mlip_energy=e, campaign="c")
           for e in (-3.0, -2.9, -2.8, -1.0)]  # fmt: skip
    for cid, src in zip(ids, ["template", "random_symmetric", "template", "template"], strict=True):
        db.candidates.update_one({"candidate_id": cid}, {"$set": {"source": src}})
    best = iteration_summary(db, "c", 0)["best_sources"]
    assert best == {"level": "mlip", "top": 4, "template": 3,
                    "by_source": {"template": 3, "random_symmetric": 1}}  # fmt: skip
    from cspflow.store.candidate_stats import best_sources

    assert best_sources(db, "c", 2) == {"level": "mlip", "top": 2, "template": 1,
                                        "by_source": {"template": 1, "random_symmetric": 1}}  # fmt: skip
