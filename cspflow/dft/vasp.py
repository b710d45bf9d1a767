"""VASP through atomate2's relax makers + custodian (the Materials Project route).

:class:`VaspDftMaker` is atomate2's ``MPGGARelaxMaker``: the default preset uses its input set
(pymatgen's ``MPRelaxSet`` with Gamma-centred, metal-aware k-points), the inputs the Materials
Project's MP2020 correction scheme was fitted for; nothing here corrects energies (that is
:mod:`cspflow.dft.corrections`, applied by the stage when ``dft.correction`` is set, as it is
by default for this preset); the ``fuse2`` preset reproduces FUSE2's
protocol on the same base. A preset's INCAR/KPOINTS overrides become the input set's
``user_incar_settings``/``user_kpoints_settings``. VASP runs through atomate2's ``run_vasp`` with
custodian's default handlers.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomate2.vasp.jobs.base import BaseVaspMaker, vasp_job
from atomate2.vasp.jobs.mp import MPGGARelaxMaker

from cspflow.dft.dispersion import vasp_incar
from cspflow.errors import CspflowError

if TYPE_CHECKING:
    from jobflow import Response
    from pymatgen.core import Structure
    from pymatgen.io.vasp.sets import VaspInputSet

__all__ = ["VaspDftMaker", "build_input_set", "fuse2_encut", "check_vasp"]


def fuse2_encut(elements: list[str], enmax: dict[str, float], scale: float = 1.3) -> int:
    """Return FUSE2's plane-wave cutoff: ``scale`` x the largest ENMAX, rounded up (eV).

    Raises
    ------
    CspflowError
        When ENMAX is unknown for one of ``elements``.
    """
    missing = [el for el in elements if el not in enmax]
    if missing:
        raise CspflowError(
            f"the fuse2 preset needs the POTCAR ENMAX of {', '.join(missing)}: configure "
            "PMG_VASP_PSP_DIR so pymatgen can read the POTCARs, or give dft.enmax / dft.incar.ENCUT"
        )
    return int(math.ceil(scale * max(enmax[el] for el in elements)))


def _potcar_enmax(input_set: VaspInputSet) -> dict[str, float]:
    """ENMAX per element from the POTCARs when pymatgen can read them, else empty."""
    try:
        return {p.element: float(p.enmax) for p in input_set.potcar}
    except Exception:  # no POTCAR library here (potcar_spec mode)
        return {}


def build_input_set(
    structure: Structure, settings: dict[str, Any], base: VaspInputSet | None = None
) -> VaspInputSet:
    """Return the input-set generator for a resolved VASP preset.

    ``base`` (default: atomate2's ``MPGGARelaxMaker`` input set, pymatgen's ``MPRelaxSet`` with
    ``force_gamma``, ``auto_metal_kpoints`` and without ``inherit_incar``) gets the preset's
    INCAR and KPOINTS settings as ``user_incar_settings``/``user_kpoints_settings``; a
    ``KSPACING`` in the INCAR turns ``auto_metal_kpoints`` off (VASP then makes the grid). The
    structure is only used to resolve structure-dependent settings (FUSE2's ENCUT).
    """
    if base is None:
        base = MPGGARelaxMaker().input_set_generator
    # the dispersion first, so an explicit IVDW in the preset or dft.incar still wins
    incar: dict[str, Any] = {
        **vasp_incar(settings.get("dispersion")),
        **dict(settings.get("incar", {})),
    }
    relax = settings.get("relax", "cell")
    if relax == "positions":
        incar.setdefault("ISIF", 2)
    elif relax == "static":
        incar.update({"NSW": 0, "IBRION": -1})
    if settings.get("steps") is not None and relax != "static":
        incar["NSW"] = int(settings["steps"])
    if settings.get("fmax") is not None and relax != "static":
        incar["EDIFFG"] = -abs(float(settings["fmax"]))
    kpoints = dict(settings.get("kpoints", {})) or None
    kwargs: dict[str, Any] = {}
    if "KSPACING" in incar:
        kwargs["auto_metal_kpoints"] = False
    scale = settings.get("encut_scale")
    if scale and "ENCUT" not in settings.get("incar", {}):
        elements = [el.symbol for el in structure.composition.elements]
        probe = replace(base, structure=structure, user_incar_settings=incar, **kwargs)
        enmax = {**_potcar_enmax(probe), **settings.get("enmax", {})}
        incar["ENCUT"] = fuse2_encut(elements, enmax, scale)
    # pymatgen annotates user_kpoints_settings as dict; None is its documented default ({})
    return replace(base, user_incar_settings=incar, user_kpoints_settings=kpoints, **kwargs)  # type: ignore[arg-type]


def check_vasp(vasp_cmd: str | None, elements: list[str], potcar_spec: bool) -> None:
    """Raise :class:`CspflowError` when VASP cannot run here (no command, no POTCARs)."""
    if not vasp_cmd:
        raise CspflowError(
            "dft.engine is vasp but no VASP command is configured; set CSPFLOW_VASP_CMD "
            "(e.g. 'srun vasp_std') or pick dft.engine gpaw or cp2k"
        )
    parts = shlex.split(os.path.expandvars(vasp_cmd))
    exe = parts[-1] if parts else ""
    if shutil.which(exe) is None and not Path(exe).is_file():
        raise CspflowError(f"VASP executable {exe!r} not found (vasp_cmd={vasp_cmd!r})")
    known = MPGGARelaxMaker().input_set_generator.config_dict["POTCAR"]  # MPRelaxSet.CONFIG
    missing = [el for el in elements if el not in known]
    if missing:
        raise CspflowError(
            f"the MP POTCAR set has no entry for {', '.join(missing)}; this chemical system "
            "cannot run with the VASP presets"
        )
    if not potcar_spec:
        from pymatgen.core import SETTINGS

        if not SETTINGS.get("PMG_VASP_PSP_DIR"):
            raise CspflowError(
                "VASP needs POTCARs but PMG_VASP_PSP_DIR is not configured; run "
                "`pmg config --add PMG_VASP_PSP_DIR /path/to/potcars`"
            )


@dataclass
class VaspDftMaker(MPGGARelaxMaker):
    """atomate2's ``MPGGARelaxMaker`` with a cspflow preset applied to its input set at run time.

    Parameters
    ----------
    name : str
        Job name.
    settings : dict
        Resolved cspflow VASP preset (see :data:`cspflow.dft.presets.PRESETS`).
    run_vasp_kwargs : dict
        Passed to atomate2's ``run_vasp`` (``vasp_cmd``, ``handlers``, ``max_errors``).
    write_input_set_kwargs : dict
        Passed to atomate2's ``write_vasp_input_set`` (``potcar_spec=True`` writes
        POTCAR.spec instead of POTCAR).
    """

    name: str = "vasp relax"
    settings: dict[str, Any] = field(default_factory=dict)

    @vasp_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Write the inputs, run VASP through custodian and parse the TaskDoc."""
        generator = build_input_set(structure, self.settings, self.input_set_generator)
        # atomate2 types input_set_generator as its VaspInputGenerator, yet its own default
        # here is pymatgen's MPRelaxSet (a VaspInputSet), which is what this replaces
        inner = replace(self, input_set_generator=generator)  # type: ignore[arg-type]
        return BaseVaspMaker.make.original(inner, structure, prev_dir=prev_dir)  # type: ignore[attr-defined]
