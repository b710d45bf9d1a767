from __future__ import annotations

import pytest
from pydantic import ValidationError

from cspflow.settings import CspflowSettings, get_settings


def test_env_prefix_and_call_time_read(monkeypatch, tmp_path):
    monkeypatch.setenv("CSPFLOW_CONFIG_FILE", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("CSPFLOW_DB_NAME", "first")
    get_settings.cache_clear()
    assert get_settings().db_name == "first"
    monkeypatch.setenv("CSPFLOW_DB_NAME", "second")
    assert get_settings().db_name == "first"  # cached until cleared
    get_settings.cache_clear()
    assert get_settings().db_name == "second"
    get_settings.cache_clear()


def test_yaml_file_is_read_and_env_wins(monkeypatch, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("db_name: from_yaml\ndevice: cpu\n")
    monkeypatch.setenv("CSPFLOW_CONFIG_FILE", str(cfg))
    monkeypatch.delenv("CSPFLOW_DB_NAME", raising=False)
    s = CspflowSettings()
    assert s.db_name == "from_yaml" and s.device == "cpu"
    monkeypatch.setenv("CSPFLOW_DB_NAME", "from_env")
    assert CspflowSettings().db_name == "from_env"


def test_unknown_key_rejected(monkeypatch, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("db_nmae: typo\n")
    monkeypatch.setenv("CSPFLOW_CONFIG_FILE", str(cfg))
    with pytest.raises(ValidationError, match="db_nmae"):
        CspflowSettings()


def test_uri_is_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("CSPFLOW_CONFIG_FILE", str(tmp_path / "none.yaml"))
    s = CspflowSettings(db_uri="mongodb://alice:hunter2@db.example:27017/")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
