#!/usr/bin/env python
"""A stand-in for the VASP executable: reads INCAR/POSCAR, writes outputs pymatgen parses.

Energies and forces come from ASE's EMT (Lennard-Jones for elements EMT lacks); with
IBRION >= 0 the positions are relaxed (fixed cell) for at most NSW steps. It writes vasprun.xml,
OUTCAR, CONTCAR and OSZICAR in the form pymatgen, custodian and emmet read.

Environment:
    FAKE_VASP_COUNTER  file that gets one line per invocation (proves reruns do not run VASP).
    FAKE_VASP_FAIL     "subspace": while INCAR has LREAL set (custodian's first correction for
                       this error is LREAL = False), print VASP's "Sub-Space-Matrix is not
                       hermitian in DAV" warning and stop without outputs.
    FAKE_VASP_CRASH_ELEMENT  crash (exit 1, no outputs, no known message) when the POSCAR
                       holds this element: a failure custodian cannot fix.
    FAKE_VASP_OFFSET   energy shift per atom (eV, default -3.0) added to EMT/LJ energies.

The POTCAR titles in vasprun.xml (``PAW_PBE Mg_pv 06Sep2000``) name the symbols of POTCAR.spec
(or POTCAR) as real VASP names those of its POTCAR, so emmet's TaskDoc entry carries the
``potcar_spec`` that pymatgen's compatibility schemes check.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from ase.io import read
from ase.optimize import BFGS
from pymatgen.io.vasp import Incar

# EMT energies sit near zero (custodian flags positive energies): shift to VASP-like values.
OFFSET_PER_ATOM = -3.0
EMT_ELEMENTS = {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"}


def _calculator(symbols):
    if set(symbols) <= EMT_ELEMENTS:
        from ase.calculators.emt import EMT

        return EMT()
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=2.3, epsilon=0.05, rc=6.0, smooth=True)


def _potcar_symbols(species):
    """POTCAR symbols per species: from POTCAR.spec, else POTCAR's TITEL lines, else the element."""
    spec = Path("POTCAR.spec")
    if spec.exists():
        symbols = spec.read_text().split()
    elif Path("POTCAR").exists():
        symbols = [ln.split()[3] for ln in Path("POTCAR").read_text().splitlines() if "TITEL" in ln]
    else:
        symbols = []
    return symbols if len(symbols) == len(species) else list(species)


def _vec(values, fmt="{:16.8f}"):
    return " ".join(fmt.format(float(v)) for v in values)


def _structure_xml(atoms, name=None):
    label = f' name="{name}"' if name else ""
    cell = atoms.cell.array
    rec = np.linalg.inv(cell).T
    lines = [f"  <structure{label}>", "   <crystal>", '    <varray name="basis" >']
    lines += [f"     <v>{_vec(row)} </v>" for row in cell]
    lines += ["    </varray>", f'    <i name="volume">{atoms.get_volume():16.8f} </i>']
    lines += ['    <varray name="rec_basis" >']
    lines += [f"     <v>{_vec(row)} </v>" for row in rec]
    lines += ["    </varray>", "   </crystal>", '   <varray name="positions" >']
    lines += [f"    <v>{_vec(p)} </v>" for p in atoms.get_scaled_positions(wrap=False)]
    lines += ["   </varray>", "  </structure>"]
    return "\n".join(lines)


def _incar_xml(incar):
    out = ["  <incar>"]
    for key, value in incar.items():
        if isinstance(value, bool):
            out.append(f'   <i type="logical" name="{key}"> {"T" if value else "F"}  </i>')
        elif isinstance(value, int):
            out.append(f'   <i type="int" name="{key}">{value:6d}</i>')
        elif isinstance(value, float):
            out.append(f'   <i name="{key}">{value:16.8f}</i>')
        elif isinstance(value, list):
            out.append(f'   <v name="{key}">{_vec(value)}</v>')
        else:
            out.append(f'   <i type="string" name="{key}">{value}</i>')
    out.append("  </incar>")
    return "\n".join(out)


def _parameters_xml(incar, nions, nelect, nbands):
    ints = {
        "ISPIN": int(incar.get("ISPIN", 1)),
        "NBANDS": nbands,
        "NELM": int(incar.get("NELM", 60)),
        "NSW": int(incar.get("NSW", 0)),
        "IBRION": int(incar.get("IBRION", -1)),
        "ISIF": int(incar.get("ISIF", 2)),
        "ISMEAR": int(incar.get("ISMEAR", 1)),
        "LORBIT": int(incar.get("LORBIT", 0)),
        "NIONS": nions,
        "ICHARG": int(incar.get("ICHARG", 2)),
    }
    reals = {
        "ENCUT": float(incar.get("ENCUT", 400.0)),
        "EDIFF": float(incar.get("EDIFF", 1e-4)),
        "EDIFFG": float(incar.get("EDIFFG", -0.05)),
        "SIGMA": float(incar.get("SIGMA", 0.05)),
        "NELECT": float(nelect),
        "POTIM": float(incar.get("POTIM", 0.5)),
    }
    out = ["  <parameters>", '   <separator name="general" >']
    out += [f'    <i type="int" name="{k}">{v:6d}</i>' for k, v in ints.items()]
    out += [f'    <i name="{k}">{v:16.8f}</i>' for k, v in reals.items()]
    out += ['    <i type="string" name="GGA">--</i>', '    <i type="string" name="ALGO">Normal</i>']
    out += [
        '    <i type="logical" name="LSORBIT"> F  </i>',
        '    <i type="logical" name="LDAU"> F  </i>',
    ]
    out += ['    <v type="logical" name="LHFCALC"> F </v>' if False else ""]
    out += ["   </separator>", "  </parameters>"]
    return "\n".join(x for x in out if x)


def main() -> int:
    counter = os.environ.get("FAKE_VASP_COUNTER")
    if counter:
        with open(counter, "a") as fh:
            fh.write(f"{os.getcwd()}\n")
    incar = Incar.from_file("INCAR")
    if os.environ.get("FAKE_VASP_FAIL") == "subspace" and incar.get("LREAL", False) not in (
        False,
        "F",
        ".FALSE.",
    ):
        print(" running on    1 total cores")
        print(" WARNING: Sub-Space-Matrix is not hermitian in DAV            1")
        sys.stdout.flush()
        return 1

    start = time.time()
    atoms = read("POSCAR", format="vasp")
    if os.environ.get("FAKE_VASP_CRASH_ELEMENT") in atoms.get_chemical_symbols():
        print("forrtl: severe (174): SIGSEGV, segmentation fault occurred", file=sys.stderr)
        return 1
    initial = atoms.copy()
    symbols = atoms.get_chemical_symbols()
    atoms.calc = _calculator(symbols)
    nsw = int(incar.get("NSW", 0))
    ibrion = int(incar.get("IBRION", -1))
    fmax = abs(float(incar.get("EDIFFG", -0.05))) if float(incar.get("EDIFFG", -0.05)) < 0 else 0.05
    frames = []

    offset = float(os.environ.get("FAKE_VASP_OFFSET", OFFSET_PER_ATOM))

    def record():
        energy = atoms.get_potential_energy() + offset * len(atoms)
        frames.append((atoms.copy(), energy, atoms.get_forces().copy(), atoms.get_stress()))

    record()
    if nsw > 1 and ibrion >= 0:
        opt = BFGS(atoms, logfile=None)
        opt.attach(record, interval=1)
        opt.run(fmax=fmax, steps=max(1, nsw - 2))
        frames = frames[:1] + frames[2:] if len(frames) > 1 else frames
    nions = len(atoms)
    species = list(dict.fromkeys(symbols))
    counts = [symbols.count(s) for s in species]
    nelect = 4 * nions
    nbands = max(8, nelect // 2 + 4)
    nelm = int(incar.get("NELM", 60))

    # vasprun.xml
    xml = ['<?xml version="1.0" encoding="ISO-8859-1"?>', "<modeling>", " <generator>"]
    xml += [
        '  <i name="program" type="string">vasp </i>',
        '  <i name="version" type="string">6.3.2 </i>',
    ]
    xml += ['  <i name="subversion" type="string">fake cspflow-test </i>']
    xml += [
        '  <i name="platform" type="string">LinuxGNU </i>',
        '  <i name="date" type="string">2024 01 01 </i>',
    ]
    xml += ['  <i name="time" type="string">00:00:00 </i>', " </generator>", _incar_xml(incar)]
    xml += [
        " <kpoints>",
        '  <generation param="Gamma">',
        '   <v type="int" name="divisions">   1 1 1 </v>',
    ]
    xml += ['   <v name="usershift">  0.0 0.0 0.0 </v>', "  </generation>"]
    xml += ['  <varray name="kpointlist" >', "   <v>  0.0 0.0 0.0 </v>", "  </varray>"]
    xml += ['  <varray name="weights" >', "   <v>  1.0 </v>", "  </varray>", " </kpoints>"]
    xml += [_parameters_xml(incar, nions, nelect, nbands)]
    xml += [" <atominfo>", f"  <atoms>{nions:6d} </atoms>", f"  <types>{len(species):6d} </types>"]
    xml += ['  <array name="atoms" >', '   <dimension dim="1">ion</dimension>']
    xml += [
        '   <field type="string">element</field>',
        '   <field type="int">atomtype</field>',
        "   <set>",
    ]
    xml += [f"    <rc><c>{s:2s}</c><c>{species.index(s) + 1:4d}</c></rc>" for s in symbols]
    xml += [
        "   </set>",
        "  </array>",
        '  <array name="atomtypes" >',
        '   <dimension dim="1">type</dimension>',
    ]
    xml += ['   <field type="int">atomspertype</field>', '   <field type="string">element</field>']
    xml += ["   <field>mass</field>", "   <field>valence</field>"]
    xml += ['   <field type="string">pseudopotential</field>', "   <set>"]
    for s, c, psp in zip(species, counts, _potcar_symbols(species), strict=True):
        xml.append(
            f"    <rc><c>{c:4d}</c><c>{s:2s}</c><c>{1.0:16.8f}</c><c>{4.0:16.8f}</c>"
            f"<c>  PAW_PBE {psp} 06Sep2000</c></rc>"
        )
    xml += ["   </set>", "  </array>", " </atominfo>", _structure_xml(initial, "initialpos")]
    for at, energy, forces, stress in frames:
        xml += [" <calculation>"]
        for k in range(3):
            e = energy + 0.1 / (k + 1) ** 3 if k < 2 else energy
            xml += ["  <scstep>", "   <energy>", f'    <i name="e_fr_energy">{e:16.8f} </i>']
            xml += [
                f'    <i name="e_wo_entrp">{e:16.8f} </i>',
                f'    <i name="e_0_energy">{e:16.8f} </i>',
            ]
            xml += ["   </energy>", "  </scstep>"]
        xml += [_structure_xml(at), '  <varray name="forces" >']
        xml += [f"   <v>{_vec(f)} </v>" for f in forces]
        voigt = -stress * 1602.1766208  # eV/A^3 -> kBar, VASP sign convention
        s3 = [
            [voigt[0], voigt[5], voigt[4]],
            [voigt[5], voigt[1], voigt[3]],
            [voigt[4], voigt[3], voigt[2]],
        ]
        xml += ["  </varray>", '  <varray name="stress" >']
        xml += [f"   <v>{_vec(row)} </v>" for row in s3]
        xml += ["  </varray>", "  <energy>", f'   <i name="e_fr_energy">{energy:16.8f} </i>']
        xml += [
            f'   <i name="e_wo_entrp">{energy:16.8f} </i>',
            f'   <i name="e_0_energy">{energy:16.8f} </i>',
        ]
        xml += ["  </energy>", '  <time name="totalsc">    0.10    0.10</time>']
        xml += ["  <eigenvalues>", "   <array>", '    <dimension dim="1">band</dimension>']
        xml += [
            '    <dimension dim="2">kpoint</dimension>',
            '    <dimension dim="3">spin</dimension>',
        ]
        xml += [
            "    <field>eigene</field>",
            "    <field>occ</field>",
            "    <set>",
            '     <set comment="spin 1">',
        ]
        xml += ['      <set comment="kpoint 1">']
        for b in range(nbands):
            occ = 1.0 if b < nelect // 2 else 0.0
            xml.append(f"       <r> {-8.0 + b * 1.0:10.4f} {occ:8.4f} </r>")
        xml += ["      </set>", "     </set>", "    </set>", "   </array>", "  </eigenvalues>"]
        xml += [
            "  <dos>",
            f'   <i name="efermi">{-8.0 + (nelect // 2) - 0.5:10.4f} </i>',
            "   <total>",
        ]
        xml += ["    <array>", '     <dimension dim="1">gridpoints</dimension>']
        xml += ['     <dimension dim="2">spin</dimension>', "     <field>energy</field>"]
        xml += ["     <field>total</field>", "     <field>integrated</field>", "     <set>"]
        xml += ['      <set comment="spin 1">']
        xml += [f"       <r> {-10.0 + i:10.4f} {0.5:10.4f} {0.5 * i:10.4f} </r>" for i in range(20)]
        xml += [
            "      </set>",
            "     </set>",
            "    </array>",
            "   </total>",
            "  </dos>",
            " </calculation>",
        ]
    xml += [_structure_xml(atoms, "finalpos"), "</modeling>", ""]
    Path("vasprun.xml").write_text("\n".join(xml))

    # CONTCAR, OSZICAR, OUTCAR
    from ase.io import write

    write("CONTCAR", atoms, format="vasp", direct=True)
    osz = [
        "       N       E                     dE             d eps       ncg     rms          rms(c)"
    ]
    out = [
        " vasp.6.3.2 fake (cspflow tests)",
        f"   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1   number of bands    NBANDS=    {nbands:4d}",
        f"   number of dos      NEDOS =    301   number of ions     NIONS =    {nions:4d}",
        f"   NELM  = {nelm:6d}",
        "   total plane-waves  NPLWV =   1000",
        f"   IBRION = {ibrion:4d}",
    ]
    for i, (_, energy, _forces, _stress) in enumerate(frames, start=1):
        osz.append(f"DAV:   1    {energy:.8E}   {energy:.5E}   -0.10000E-05   100   0.100E-02")
        osz.append(f"   {i} F= {energy:.8E} E0= {energy:.8E}  d E ={0.0:.6E}")
        out.append(
            "  total drift:                                0.000001     0.000001     0.000001"
        )
        out.append(f"  free  energy   TOTEN  =      {energy:16.8f} eV")
        out.append(
            f"  energy  without entropy=     {energy:16.8f}  energy(sigma->0) =     {energy:16.8f}"
        )
    Path("OSZICAR").write_text("\n".join(osz) + "\n")
    elapsed = time.time() - start
    out += [
        " E-fermi :  -0.5000     XC(G=0):  -1.0000     alpha+bet : -1.0000",
        "",
        " reached required accuracy - stopping structural energy minimisation"
        if len(frames) > 1
        else "",
        " General timing and accounting informations for this job:",
        " ========================================================",
        "",
        f"                  Total CPU time used (sec):    {elapsed:10.3f}",
        f"                            User time (sec):    {elapsed:10.3f}",
        "                          System time (sec):         0.000",
        f"                         Elapsed time (sec):    {elapsed:10.3f}",
        "",
        "                   Maximum memory used (kb):       10000.",
        "                   Average memory used (kb):          N/A",
        "",
        "                          Minor page faults:          1000",
        "                          Major page faults:             0",
        "                 Voluntary context switches:           100",
    ]
    Path("OUTCAR").write_text("\n".join(out) + "\n")
    print(" running on    1 total cores")
    print(f" fake VASP finished: {len(frames)} ionic steps, E = {frames[-1][1]:.6f} eV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
