"""Settings from ``RETWIN_*`` environment variables, validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from retwin_service.settings import Settings, is_loopback

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py


def test_environment_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RETWIN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETWIN_PORT", "8123")
    monkeypatch.setenv("RETWIN_PRECOMPUTE", '["tiny"]')
    monkeypatch.delenv("RETWIN_DATABASE_URL", raising=False)
    s = Settings()
    assert s.port == 8123 and s.host == "127.0.0.1" and s.precompute == ["tiny"]
    assert s.database_url == f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    assert s.results_dir == tmp_path / "results"
    assert s.loopback


@pytest.mark.parametrize(("var", "value"), [
    ("RETWIN_PORT", "70000"), ("RETWIN_WORKERS", "0"), ("RETWIN_QUEUE_MAX", "x"),
    ("RETWIN_DASK_ADDRESS", "localhost"), ("RETWIN_BOOTSTRAP_TOKEN", "short"),
    ("RETWIN_MAX_HORIZON_YEARS", "0"), ("RETWIN_LOG_LEVEL", "loud"),
])
def test_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(("host", "loop"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False),
])
def test_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop
