"""Service settings, read from the environment (``RETWIN_…``) and validated.

Every field can be set as ``RETWIN_<NAME>`` (``RETWIN_PORT=8080``). A bad value stops the
service at start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "default_data_dir", "is_loopback"]


def default_data_dir() -> Path:
    """The user's data folder for retwin (``~/.local/share/retwin`` on Linux)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("retwin", appauthor=False))


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, ``localhost``); an
    IPv4 address mapped into IPv6 (``::ffff:127.0.0.1``) counts as the IPv4 one."""
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


PosInt = Annotated[int, Field(ge=1)]


class Settings(BaseSettings):
    """What the service reads from ``RETWIN_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RETWIN_", extra="ignore",
                                      validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Registry database and stored results.")
    database_url: str = Field(
        "", description="SQLAlchemy URL of the run registry; default: a SQLite file in "
                        "data_dir (one service process). postgresql+psycopg://user:pw@host/db "
                        "for several service processes sharing one registry (and data_dir).")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: PosInt = Field(default_factory=lambda: max(1, os.cpu_count() or 1),
                            description="Local worker processes running simulations.")
    queue_max: PosInt = Field(64, description="Computations queued or running at once; "
                                              "beyond it a new run is answered 429.")
    per_token_concurrent: PosInt = Field(16, description="Unfinished runs per token.")
    max_replications: PosInt = 1000
    max_changes: PosInt = 100
    max_body_bytes: PosInt = 1_000_000
    max_horizon_years: Annotated[float, Field(gt=0, le=40)] = 15.0
    wait_max_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0
    min_free_mb: Annotated[float, Field(ge=0)] = Field(
        16.0, description="Free space the data folder needs: below it new runs are refused "
                          "(507) and the health check reports degraded.")
    dask_address: str | None = Field(
        None, description="tcp://host:port of a Dask scheduler; runs go there when set.")
    bootstrap_token: SecretStr | None = Field(
        None, description="An API token registered at start-up (for containers).")
    bootstrap_token_name: str = "admin"
    precompute: list[str] = Field(
        default_factory=lambda: ["baotou-2024"],
        description="Models whose default baseline is computed at start-up.")
    log_level: str = "info"
    log_format: str = Field(
        "text", description="text (human-readable lines) or json (one JSON object a line, "
                            "with the request id of the request that logged it).")
    claim_lease_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="How long a service process's claim on a computation lasts "
                          "unless renewed; another process sharing the database takes the "
                          "computation over once it lapses.")

    @field_validator("dask_address")
    @classmethod
    def _dask(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        if v is not None and "://" not in v:
            raise ValueError(f"dask_address(={v!r}) must look like tcp://host:8786")
        return v

    @field_validator("bootstrap_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 24:
            raise ValueError("bootstrap_token must be at least 24 characters long")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level(={v!r}) must be critical, error, warning, info or debug")
        return v

    @field_validator("log_format")
    @classmethod
    def _format(cls, v: str) -> str:
        v = v.lower()
        if v not in ("text", "json"):
            raise ValueError(f"log_format(={v!r}) must be text or json")
        return v

    @model_validator(mode="after")
    def _database(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'registry.sqlite3'}"
        return self

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def max_horizon_days(self) -> int:
        return int(self.max_horizon_years * 366)

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mb * 1024 * 1024)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)
