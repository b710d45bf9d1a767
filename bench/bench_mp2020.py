"""The MP2020 example of docs/dft.md: pymatgen's shipped Mg-Al-O entries and CHGNet's MgO.

Prints, for the Materials Project entries pymatgen ships for Mg-Al-O
(:func:`cspflow.dft.corrections.mp_reference_entries`), the raw energy, the MP2020 correction
and the corrected energy per atom (:func:`cspflow.dft.corrections.correct_entry`); MgAl2O4's
formation energy, energy above the hull and energy against MgO + Al2O3 from raw and from
corrected energies; and CHGNet's relaxed rocksalt MgO (one thread), which sits next to MP's
corrected value because CHGNet is trained on corrected MP energies.

    .venv/bin/python bench/bench_mp2020.py [--skip-chgnet]
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    """Print the table and the figures docs/dft.md quotes."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    from cspflow.dft.corrections import correct_entry, mp_reference_entries

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-chgnet", action="store_true", help="pymatgen part only")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    entries = mp_reference_entries("Al-Mg-O")
    docs = {e.entry_id: correct_entry(e, "mp2020") for e in entries}
    print("| entry | formula | raw (eV/atom) | MP2020 (eV/atom) | corrected (eV/atom) |")
    for e in entries:
        d = docs[e.entry_id]
        print(f"| {e.entry_id} | {e.composition.reduced_formula} | "
              f"{d.uncorrected_energy_per_atom:.4f} | {d.correction_per_atom:.4f} | "
              f"{d.corrected_energy_per_atom:.4f} |")  # fmt: skip
    for field in ("uncorrected_energy_per_atom", "corrected_energy_per_atom"):
        pd = PhaseDiagram([PDEntry(e.composition,
                                   getattr(docs[e.entry_id], field) * e.composition.num_atoms,
                                   name=e.entry_id) for e in entries])  # fmt: skip
        spinel = next(x for x in pd.all_entries if x.name == "mp-3536")
        print(f"MgAl2O4 from {field.split('_')[0]} energies: formation "
              f"{pd.get_form_energy_per_atom(spinel):.4f} eV/atom, above hull "
              f"{pd.get_e_above_hull(spinel):.4f}, against MgO + Al2O3 "
              f"{pd.get_equilibrium_reaction_energy(spinel) * 1000:.1f} meV/atom")  # fmt: skip
    raw_spinel = docs["mp-3536"]
    mixed = raw_spinel.uncorrected_energy_per_atom - raw_spinel.corrected_energy_per_atom
    print(f"a result at MP's raw spinel energy against corrected references: "
          f"{mixed * 1000:.0f} meV/atom above the hull")  # fmt: skip
    print(f"pymatgen part: {time.perf_counter() - start:.1f} s")
    if args.skip_chgnet:
        return
    import torch
    from chgnet.model import CHGNet, StructOptimizer
    from pymatgen.core import Lattice, Structure

    torch.set_num_threads(1)
    start = time.perf_counter()
    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.25), ["Mg", "O"],
                                    [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()  # fmt: skip
    result = StructOptimizer(model=CHGNet.load(verbose=False)).relax(mgo, fmax=0.01, verbose=False)
    energy = float(result["trajectory"].energies[-1]) / len(mgo)
    again = energy + (docs["mp-1265"].correction_per_atom or 0.0)
    print(f"CHGNet rocksalt MgO, relaxed: {energy:.4f} eV/atom (MP raw "
          f"{docs['mp-1265'].uncorrected_energy_per_atom:.4f}, corrected "
          f"{docs['mp-1265'].corrected_energy_per_atom:.4f}); corrected again: {again:.4f}; "
          f"{time.perf_counter() - start:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
