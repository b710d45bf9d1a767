"""Chemistry helpers below the stages: reading structure files.

Every command and source that takes structure files reads them here: :func:`read_structures`
(``cspflow generate --external``, prototype files, benchmark references) returns the structures
of a file or directory; :func:`read_named_structures` (``cspflow relax``, ``cspflow dft
relax``) reads several files or directories and names each structure after its file, the name
its results are written under.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pymatgen.core import Structure

from cspflow.errors import CspflowError

__all__ = ["read_structures", "read_named_structures"]

_SUFFIXES = {".cif", ".mcif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json"}


def _known(f: Path) -> bool:
    """True for the formats a directory is searched for (:data:`_SUFFIXES`, POSCAR/CONTCAR)."""
    return f.suffix.lower() in _SUFFIXES or f.name.upper().startswith(("POSCAR", "CONTCAR"))


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and _known(p))
    return [path]


def _read_other(f: Path) -> Structure:
    """A file named explicitly in a format outside :data:`_SUFFIXES`: pymatgen, else ASE.

    ASE reads what pymatgen does not (e.g. ``.traj``, FHI-aims ``geometry.in``); of a file with
    several images it reads the last.
    """
    try:
        return Structure.from_file(f)
    except Exception:
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(read(f))  # type: ignore[arg-type]


def _none_found(path: Path) -> CspflowError:
    return CspflowError(
        f"no CIF, POSCAR or extxyz files (nor pymatgen JSON) found in {path}; put structure "
        "files there"
    )


def read_structures(path: str | Path) -> list[Structure]:
    """Read every structure in a file or directory (CIF, POSCAR/CONTCAR, extxyz, pymatgen JSON).

    A directory is searched for those formats; a file named explicitly in another format is
    read by pymatgen or, failing that, by ASE (its last image).

    Raises
    ------
    CspflowError
        When the path does not exist or a file cannot be parsed as a structure.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CspflowError(f"structure file {p} does not exist; check the path")
    out: list[Structure] = []
    for f in _expand(p):
        try:
            if f.suffix.lower() in {".xyz", ".extxyz"}:
                from ase.io import read
                from pymatgen.io.ase import AseAtomsAdaptor

                out += [AseAtomsAdaptor.get_structure(a) for a in read(f, index=":")]
            elif f.suffix.lower() == ".json":
                out.append(Structure.from_dict(json.loads(f.read_text())))
            elif _known(f):
                out.append(Structure.from_file(f))
            else:
                out.append(_read_other(f))
        except Exception as exc:
            detail = " ".join(str(exc).split())[:120] or "no cell or atoms found"
            raise CspflowError(
                f"cannot read a structure from {f} ({type(exc).__name__}: {detail}); give CIF, "
                "POSCAR or extxyz files (or pymatgen JSON) of periodic crystals"
            ) from None
    if not out:
        raise _none_found(p)
    return out


def read_named_structures(paths: Iterable[str | Path]) -> list[tuple[str, Structure]]:
    """Read ``(name, structure)`` pairs from files and directories of them, in order.

    Each structure is named by its file's stem; the frames of a file with several (extxyz) are
    named ``<stem>_<k>``; where two names coincide, each gets ``-<position>`` appended, so
    every result file has its own name.

    Raises
    ------
    CspflowError
        As :func:`read_structures`: a path that does not exist, a directory without structure
        files, or a file that cannot be parsed as a structure.
    """
    out: list[tuple[str, Structure]] = []
    for path in paths:
        p = Path(path).expanduser()
        files = _expand(p) if p.is_dir() else [p]
        if not files:
            raise _none_found(p)
        for f in files:
            structures = read_structures(f)
            for k, s in enumerate(structures):
                out.append((f.stem if len(structures) == 1 else f"{f.stem}_{k}", s))
    names = [n for n, _ in out]
    return [(f"{n}-{i}" if names.count(n) > 1 else n, s) for i, (n, s) in enumerate(out)]
