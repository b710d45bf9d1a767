"""The model registry (cspflow.models) through the CLI: bad input stops with one line."""

from __future__ import annotations

import pytest


def test_unknown_model_id_is_one_line(db, settings, capsys):
    from cspflow.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["model", "show", "mace-nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: no model 'mace-nope' in the model registry; list them with `cspflow model list`"
    )


def test_model_list_and_show_print_the_deciding_figures(db, settings, tmp_path):
    """``model list|show`` (and ``--json``) carry kind, relative-energy MAE, rank correlation and
    the force MAE on frames with forces, besides the absolute figures."""
    import json

    from typer.testing import CliRunner

    from cspflow.cli.main import app
    from cspflow.learn.evaluate import promotion
    from cspflow.models import register_model
    from cspflow.schemas.learn import ModelMetrics

    def m(model, rel, rank, force, absolute):
        return ModelMetrics(
            model=model, energy_mae_mev_per_atom=absolute, force_mae_mev_per_a=force + 1.0,
            n_frames=9, relative_energy_mae_mev_per_atom=rel, rank_correlation=rank,
            force_mae_moving_mev_per_a=force, n_relative_frames=9, n_compositions=1,
            n_force_frames=6,
        )  # fmt: skip

    new, cur = m("registry:chgnet-x", 3.25, 0.93, 41.5, 7.75), m("chgnet", 12.5, 0.55, 60.25, 4.5)
    ok, why = promotion(new, cur)
    f = tmp_path / "chgnet.pth.tar"
    f.write_bytes(b"weights")
    doc = register_model(db, f, {
        "kind": "chgnet", "chemsys": "Cu", "parent": "chgnet", "foundation_model": "chgnet",
        "training_set": {"chemsys": "Cu", "n_frames": 30}, "energy_shift": {"Cu": 4.103},
        "metrics": {"new": new.model_dump(), "current": cur.model_dump()}, "promoted": ok,
        "promotion_reason": why,
    })  # fmt: skip
    assert doc.model_id.startswith("chgnet-") and ok
    runner = CliRunner()
    listed = runner.invoke(app, ["model", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    row = next(ln for ln in listed.stdout.splitlines() if doc.model_id in ln)
    for text in ("chgnet", "3.2", "0.93", "41.5 (6)", "yes"):
        assert text in row, (text, row)
    shown = runner.invoke(app, ["model", "show", doc.model_id], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    print(shown.stdout)
    for text in ("(chgnet)", "12.5", "0.55", "60.2 (6)", "7.8", "Cu +4.1030",
                 "beats chgnet on relative-energy MAE"):  # fmt: skip
        assert text in shown.stdout, text
    data = json.loads(runner.invoke(app, ["model", "show", doc.model_id, "--json"]).stdout)
    assert data["kind"] == "chgnet" and data["lineage"] == [doc.model_id, "chgnet"]
    assert data["metrics"]["new"]["relative_energy_mae_mev_per_atom"] == 3.25
    assert data["metrics"]["current"]["rank_correlation"] == 0.55
