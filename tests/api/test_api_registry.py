"""The run registry: tokens hashed at rest, admission limits, the run life cycle, recovery."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from retwin_service.registry import (
    OPEN_OWNER,
    OwnerLimit,
    QueueFull,
    Registry,
    RegistryError,
    RunNotFound,
    Unstorable,
    hash_token,
    metadata,
    request_key,
    sqlite_url,
)


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(sqlite_url(tmp_path / "reg.sqlite3"))
    yield r
    r.close()


def add(reg: Registry, key: str = "k1", owner: str = "ann", **kw: object) -> str:
    return reg.add_run(owner=owner, model="tiny", request={"model": "tiny"},
                       request_hash=key, **kw).id  # type: ignore[arg-type]


def test_sqlite_runs_in_wal_mode(reg: Registry, tmp_path: Path) -> None:
    add(reg)
    con = sqlite3.connect(tmp_path / "reg.sqlite3")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_tokens_are_stored_hashed_and_revocable(reg: Registry, tmp_path: Path) -> None:
    assert not reg.has_tokens()
    rec, token = reg.create_token("ann")
    assert token.startswith("rtw_") and len(token) > 40
    assert reg.has_tokens() and reg.owner_of(token) == "ann"
    assert reg.owner_of(token + "x") is None
    raw = (tmp_path / "reg.sqlite3").read_bytes()
    for wal in tmp_path.glob("*-wal"):
        raw += wal.read_bytes()
    assert token.encode() not in raw
    assert hash_token(token).encode() in raw
    assert reg.revoke_token(rec.id) == 1
    assert reg.owner_of(token) is None and not reg.has_tokens()
    assert reg.revoke_token("ann") == 0
    with pytest.raises(RegistryError, match="token name"):
        reg.create_token("no spaces please")


def test_a_bootstrap_token_is_idempotent(reg: Registry) -> None:
    t = "a-long-enough-bootstrap-token-0123"
    a = reg.add_token("admin", t)
    b = reg.add_token("admin", t)
    assert a.id == b.id and len(reg.list_tokens()) == 1
    with pytest.raises(RegistryError):
        reg.add_token("mallory", t)


def test_admission_limits(reg: Registry) -> None:
    add(reg, "k1", queue_max=2, owner_max=2)
    add(reg, "k2", queue_max=2, owner_max=3)
    with pytest.raises(QueueFull):
        add(reg, "k3", owner="bob", queue_max=2)
    add(reg, "k1", owner="bob", queue_max=2)  # joining a computation under way is free
    with pytest.raises(OwnerLimit):
        add(reg, "k1", queue_max=2, owner_max=2)
    assert reg.counts()["queued"] == 3
    add(reg, "k9", status="done", queue_max=0, owner_max=0)  # a stored answer is no load


def test_life_cycle_and_recovery(reg: Registry) -> None:
    a, b = add(reg, "k1"), add(reg, "k1", owner="bob")
    c = add(reg, "k2")
    reg.mark_running("k1")
    reg.set_progress("k1", 0.5)
    assert reg.get_run(a).status == "running" and reg.get_run(b).progress == 0.5
    assert reg.requeue() == 3  # a restart: running runs are queued again
    assert reg.get_run(a).status == "queued" and reg.get_run(a).attempts == 1
    assert set(reg.active_keys()) == {"k1", "k2"}
    assert reg.cancel(c).status == "cancelled" and not reg.has_active("k2")
    assert sorted(reg.finish("k1", "done")) == sorted([a, b])
    assert reg.get_run(a).status == "done" and reg.get_run(a).progress == 1.0
    assert reg.cancel(a).status == "done"  # finished runs stay as they are
    assert reg.finish("k1", "failed", "x") == []
    assert reg.get_run(a).finished_at is not None and reg.get_run(a).started_at is not None


def test_owners_see_only_their_runs(reg: Registry) -> None:
    a = add(reg, owner="ann")
    add(reg, "k2", owner="bob")
    with pytest.raises(RunNotFound):
        reg.get_run(a, "bob")
    runs, total = reg.list_runs(owner="bob")
    assert total == 1 and runs[0].owner == "bob"
    runs, total = reg.list_runs(status=["done"])
    assert total == 0


def test_list_is_newest_first_and_paginated(reg: Registry) -> None:
    ids = [add(reg, f"k{i}") for i in range(5)]
    page, total = reg.list_runs(limit=2, offset=1)
    assert total == 5 and [r.id for r in page] == ids[::-1][1:3]


def test_request_key_is_canonical() -> None:
    assert request_key({"a": 1, "b": [1, 2]}) == request_key({"b": [1, 2], "a": 1})
    assert request_key({"a": 1}) != request_key({"a": 2})


def test_schema_compiles_for_postgresql() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert "TIMESTAMP WITH TIME ZONE" in ddl
        for ix in table.indexes:
            str(CreateIndex(ix).compile(dialect=dialect))
    q = sa.select(sa.func.count(sa.distinct(metadata.tables["runs"].c.request_hash)))
    assert "count(DISTINCT" in str(q.compile(dialect=dialect))


def test_open_mode_runs_of_an_older_registry_go_to_the_open_owner(tmp_path: Path) -> None:
    """Older registries named the open owner ``local``, a name a token can have: the runs
    made before any token of that name existed were open-mode runs."""
    url = sqlite_url(tmp_path / "reg.sqlite3")
    reg = Registry(url)
    runs_t = metadata.tables["runs"]
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

    def old_run(owner: str, day: int) -> str:
        rid = f"r{day}{owner}"
        with reg.engine.begin() as conn:
            conn.execute(runs_t.insert().values(
                id=rid, owner=owner, model="tiny", request="{}", request_hash="k",
                status="done", progress=1.0, attempts=0,
                created_at=t0 + dt.timedelta(days=day)))
        return rid

    before = [old_run("local", 1), old_run("local", 2)]
    bob = old_run("bob", 3)
    reg.create_token("local")
    with reg.engine.begin() as conn:  # the token made on day 4
        conn.execute(metadata.tables["tokens"].update().values(
            created_at=t0 + dt.timedelta(days=4)))
    after = old_run("local", 5)
    reg.close()
    for _ in range(2):  # opening it again changes nothing more
        reg = Registry(url)
        assert [reg.get_run(r).owner for r in before] == [OPEN_OWNER, OPEN_OWNER]
        assert reg.get_run(after).owner == "local" and reg.get_run(bob).owner == "bob"
        reg.close()


def test_a_request_that_json_cannot_carry_is_not_stored(reg: Registry) -> None:
    for request in ({"label": "\ud800"}, {"changes": [{"factor": float("inf")}]},
                    {"x": float("nan")}):
        with pytest.raises(Unstorable, match="cannot be stored"):
            reg.add_run(owner="ann", model="tiny", request=request, request_hash="k")
    assert reg.list_runs()[1] == 0
    assert reg.get_run(add(reg)).request == {"model": "tiny"}
