"""Model specs, devices and committee arithmetic in cspflow.mlip (no weights loaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from cspflow.errors import CspflowError
from cspflow.mlip import (
    Evaluation,
    LoadedModel,
    ModelSpec,
    committee_disagreement,
    parse_model_spec,
    resolve_device,
)


def test_specs_parse(tmp_path):
    import zipfile

    f = tmp_path / "m.model"
    with zipfile.ZipFile(f, "w") as z:  # torch.save writes a zip archive
        z.writestr("m/data.pkl", b"x")
    assert parse_model_spec("chgnet") == ModelSpec("chgnet")
    assert parse_model_spec(f"mace:{f}") == ModelSpec("mace", str(f.resolve()))
    assert parse_model_spec("registry:abc-1") == ModelSpec("registry", "abc-1")


@pytest.mark.parametrize("spec", ["", "m3gnet", "mace:", "registry:"])
def test_unknown_specs_say_what_to_use(spec):
    with pytest.raises(
        CspflowError, match="use 'chgnet', 'chgnet:PATH', 'mace:PATH' or 'registry:MODEL_ID'"
    ):
        parse_model_spec(spec)


def test_chgnet_path_spec_is_a_file_or_one_line(tmp_path):
    with pytest.raises(CspflowError, match=r"^CHGNet model file 0.2 not found; .*'chgnet' for the"):
        parse_model_spec("chgnet:0.2")
    bad = tmp_path / "ft.pth.tar"
    bad.write_text("not torch")
    with pytest.raises(CspflowError, match=r"is not a loadable CHGNet model \(not a saved torch"):
        parse_model_spec(f"chgnet:{bad}")


def test_missing_mace_file_is_one_line(tmp_path):
    with pytest.raises(CspflowError, match="not found") as exc:
        parse_model_spec(f"mace:{tmp_path / 'nope.model'}")
    assert "\n" not in str(exc.value)


def test_a_file_that_is_no_torch_model_is_refused_before_loading(tmp_path):
    cif = tmp_path / "si.cif"
    cif.write_text("data_Si\n_cell_length_a 5.43\n")
    with pytest.raises(CspflowError, match="is not a loadable MACE model") as exc:
        parse_model_spec(f"mace:{cif}")
    assert "\n" not in str(exc.value)


def test_not_a_mace_file_is_a_user_error(tmp_path):
    from cspflow.mlip import load_model

    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CspflowError, match="is not a loadable MACE model"):
        load_model(f"mace:{bad}", device="cpu")


def test_device_auto_and_forced(monkeypatch, settings):
    from cspflow.settings import get_settings

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device() == expected
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv("CSPFLOW_DEVICE", "cpu")
    get_settings.cache_clear()
    assert resolve_device() == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(CspflowError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(CspflowError, match="unknown device"):
        resolve_device("tpu")


def test_unknown_registry_id_is_one_line(db):
    from cspflow.mlip import load_model

    with pytest.raises(CspflowError, match="no model 'm-404' in the model registry"):
        load_model("registry:m-404", device="cpu", db=db)


class FixedModel(LoadedModel):
    """A model whose outputs are fixed numbers (for the committee arithmetic only)."""

    def __init__(self, energy, forces):
        super().__init__(ModelSpec("chgnet"), "fixed", "cpu", None)
        self._e, self._f = energy, np.asarray(forces, dtype=float)

    def evaluate(self, atoms_list, *, batched=None):
        return [Evaluation(self._e, self._f, np.zeros(6)) for _ in atoms_list]


def test_committee_disagreement_numbers():
    si = bulk("Si", "diamond", 5.43)  # 2 atoms
    a = FixedModel(-10.0, [[0, 0, 0], [0, 0, 0]])
    b = FixedModel(-10.4, [[0.2, 0, 0], [0, 0, 0]])
    (d,) = committee_disagreement([a, b], [si])
    assert d["energy_std"] == pytest.approx(0.1)  # energies per atom -5.0, -5.2
    assert d["force_std"] == pytest.approx(0.1)  # atom 0: +-0.1 from the mean
    with pytest.raises(ValueError):
        committee_disagreement([a], [si])


def test_element_coverage_message():
    m = LoadedModel(ModelSpec("mace", "/x"), "mace-x", "cpu", None, elements=frozenset({14}))
    m.check_elements([14])
    with pytest.raises(CspflowError, match="model mace-x does not cover O; use a model"):
        m.check_elements([14, 8])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chgnet_relaxes_on_cuda():
    from cspflow.mlip import load_model
    from cspflow.prerelax.relax import relax_structures

    model = load_model("chgnet", device="cuda")
    assert model.device == "cuda"
    (out,) = relax_structures([bulk("Si", "diamond", 5.3)], model)
    assert out.converged and abs(out.structure.lattice.a * 2**0.5 - 5.43) < 0.1
