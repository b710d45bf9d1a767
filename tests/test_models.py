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
