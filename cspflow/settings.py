"""Machine settings for cspflow: one pydantic-settings class, read at call time.

Values come, highest priority first, from keyword arguments, ``CSPFLOW_*`` environment
variables, and an optional YAML file (``CSPFLOW_CONFIG_FILE``, default
``~/.config/cspflow/config.yaml`` when it exists). Scientific parameters do not live here:
they are campaign-spec or Maker fields so that they are stored with each job.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir, user_data_dir
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["CspflowSettings", "get_settings", "default_config_file"]


def default_config_file() -> Path:
    """Return the YAML settings file path (``CSPFLOW_CONFIG_FILE`` or the user config dir)."""
    env = os.environ.get("CSPFLOW_CONFIG_FILE")
    if env:
        return Path(env).expanduser()
    return Path(user_config_dir("cspflow")) / "config.yaml"


class _YamlSource(PydanticBaseSettingsSource):
    """Read settings from the optional YAML file; an absent file contributes nothing."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = default_config_file()
        if not path.is_file():
            return {}
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"settings file {path} must hold a mapping of setting: value")
        return data


class CspflowSettings(BaseSettings):
    """Where cspflow finds its database, programs and files on this machine."""

    model_config = SettingsConfigDict(env_prefix="CSPFLOW_", extra="forbid", validate_default=True)

    db_uri: SecretStr | None = Field(
        None,
        description="MongoDB URI (user/password, authSource and TLS options allowed). "
        "When unset, cspflow uses its embedded SecantusDB server.",
    )
    db_name: str = Field(
        "cspflow", description="Database holding FireWorks, jobflow and cspflow data."
    )
    db_server_selection_timeout_ms: int = Field(
        5000, description="How long a client waits for the database before giving up (ms)."
    )
    db_outage_max_wait_s: float = Field(
        6 * 3600.0,
        ge=0,
        description="How long a worker waits out a database outage, retrying with backoff, "
        "before it stops (0: fail at the first outage, as a plain FireWorks worker does).",
    )
    db_retry_cap_s: float = Field(
        60.0, gt=0, description="Longest pause between two retries while the database is down (s)."
    )
    lost_run_expiration_s: float | None = Field(
        None,
        gt=0,
        description="A RUNNING launch without a heartbeat for this long is lost and rerun "
        "(default: FireWorks' RUN_EXPIRATION_SECS, 4x its PING_TIME_SECS).",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(user_data_dir("cspflow")),
        description="Where the embedded database keeps its data, pid and uri files.",
    )
    db_host: str = Field("127.0.0.1", description="Loopback address the embedded server binds.")
    db_port: int = Field(
        27117,
        description="Embedded server port (fixed so fw_configs/my_launchpad.yaml stays valid); "
        "0 picks a free one and keeps it for this data dir.",
    )
    db_oplog_max_entries: int = Field(
        2000, description="Embedded server oplog cap (a growing oplog slows the server down)."
    )
    db_sync_on_commit: bool = Field(
        True,
        description="Fsync the embedded server's journal on every commit, so no acknowledged "
        "write is lost when the server is killed (measured: about 3x slower writes, ~450/s).",
    )
    db_oplog_retention_seconds: int = Field(120, description="Embedded server oplog retention.")
    fw_config_dir: Path | None = Field(
        None, description="Directory with my_fworker_{cpu,gpu}.yaml and my_qadapter_{cpu,gpu}.yaml."
    )
    device: str = Field("auto", description="MLIP device: auto, cpu or cuda.")
    local_gpu_workers: int | None = Field(
        None,
        ge=1,
        description="gpu-category workers `campaign run` starts on this machine (None: one "
        "per core, at most 8, when the MLIP runs on the CPU; one with a CUDA device).",
    )
    vasp_cmd: str | None = Field(None, description="Command that runs VASP (e.g. 'srun vasp_std').")
    cp2k_cmd: str = Field("cp2k.psmp", description="Command that runs CP2K.")
    gpaw_setup_path: Path | None = Field(
        None, description="GPAW PAW setups (default: Debian's /usr/share/gpaw-setups)."
    )
    work_dir: Path | None = Field(
        None, description="Where local jobs run (default: data_dir/runs)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @property
    def runs_dir(self) -> Path:
        """Directory where local workers launch jobs."""
        return self.work_dir or self.data_dir / "runs"


@lru_cache(maxsize=1)
def get_settings() -> CspflowSettings:
    """Return the settings, read once per process (``get_settings.cache_clear()`` re-reads)."""
    return CspflowSettings()
