"""CsI, CsCl type against rocksalt, with and without D3(BJ): CHGNet and GPAW PBE.

Builds both polymorphs from lattice parameters (CsCl type a = 4.567 A, experiment; rocksalt
a = 7.6 A, a start the relaxation moves), relaxes each with cell and positions free, and
prints E(CsCl) - E(rocksalt) in meV/atom for every level asked for (negative: the CsCl type,
the experimental ground state, is lower). docs/dispersion.md quotes its output.

    python bench/csi_dispersion.py --levels chgnet chgnet+d3bj gpaw gpaw+d3bj [--json F]

GPAW runs through the DFT stage's engine job (:func:`cspflow.dft.run.relax_structures`) with
the ``fast`` preset's settings except ``--ecut`` and ``--kpoint-density``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def polymorphs():
    """The two CsI structures (2-atom primitive cells)."""
    from pymatgen.core import Lattice, Structure

    a = 7.6
    fcc = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return [
        ("CsCl", Structure(Lattice.cubic(4.567), ["Cs", "I"], [[0, 0, 0], [0.5, 0.5, 0.5]])),
        ("rocksalt", Structure(fcc, ["Cs", "I"], [[0, 0, 0], [0.5, 0.5, 0.5]])),
    ]


def run_mlip(dispersion: str | None, fmax: float) -> dict[str, dict]:
    """Relax both with CHGNet (plus ``dispersion``); name -> energy per atom, lattice, steps."""
    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    model = load_model("chgnet", device="cpu", dispersion=dispersion)
    items = polymorphs()
    outcomes = relax_structures([s for _, s in items], model, fmax=fmax, max_steps=300)
    out = {}
    for (name, _), o in zip(items, outcomes, strict=True):
        assert o.ok and o.structure is not None, o.failure_reason
        out[name] = {
            "energy_per_atom": o.energy_per_atom,
            "converged": o.converged,
            "steps": o.steps,
            "volume_per_atom": o.structure.volume / len(o.structure),
            "spacegroup": o.spacegroup,
        }
    return out


def run_gpaw(dispersion: str | None, ecut: float, kdens: float, fmax: float) -> dict[str, dict]:
    """Relax both with GPAW PBE (plus ``dispersion``) through the DFT stage's engine job."""
    from cspflow.dft.run import relax_structures

    spec = {
        "engine": "gpaw",
        "preset": "fast",
        "relax": "cell",
        "fmax": fmax,
        "kpoint_density": kdens,
        "gpaw": {"ecut": ecut},
        "dispersion": dispersion,
    }
    with tempfile.TemporaryDirectory(prefix="csi-gpaw-") as tmp:
        summary = relax_structures(polymorphs(), spec, Path(tmp))
        out = {}
        for row in summary["results"]:
            out[row["name"]] = {
                k: row.get(k)
                for k in ("energy_per_atom", "status", "spacegroup", "wall_time_s", "settings_hash")
            }
            if row.get("cif"):
                from pymatgen.core import Structure

                relaxed = Structure.from_file(row["cif"])
                out[row["name"]]["volume_per_atom"] = relaxed.volume / len(relaxed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--levels", nargs="+", default=["chgnet", "chgnet+d3bj", "gpaw", "gpaw+d3bj"]
    )
    parser.add_argument("--ecut", type=float, default=400.0, help="GPAW cutoff (eV)")
    parser.add_argument("--kpoint-density", type=float, default=3.0, help="GPAW k-points/A^-1")
    parser.add_argument("--fmax", type=float, default=0.01, help="force/stress threshold")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    results = {}
    for level in args.levels:
        engine, _, dispersion = level.partition("+")
        t0 = time.monotonic()
        if engine == "chgnet":
            rows = run_mlip(dispersion or None, args.fmax)
        elif engine == "gpaw":
            rows = run_gpaw(dispersion or None, args.ecut, args.kpoint_density, args.fmax)
        else:
            raise SystemExit(f"error: unknown level {level!r}; use chgnet or gpaw, +d3bj")
        diff = 1000 * (rows["CsCl"]["energy_per_atom"] - rows["rocksalt"]["energy_per_atom"])
        results[level] = {"rows": rows, "dE_meV_per_atom": diff, "wall_s": time.monotonic() - t0}
        print(f"{level:12s} E(CsCl) - E(rocksalt) = {diff:+7.1f} meV/atom "
              f"({results[level]['wall_s']:.0f} s)", flush=True)  # fmt: skip
    if args.json:
        payload = {"ecut": args.ecut, "kpoint_density": args.kpoint_density, "fmax": args.fmax,
                   "levels": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
