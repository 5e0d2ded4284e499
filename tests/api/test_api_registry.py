"""The run registry: tokens hashed at rest, admission limits, the run life cycle, recovery,
claims on computations. Every test runs on SQLite and on a live PostgreSQL server
(:mod:`pgserver`), each time on a new, empty database."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pgserver
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

pytestmark = pytest.mark.io  # files, the console or the service: see conftest.py

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty registry database: a SQLite file, or a database on the live server."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "reg.sqlite3")
        return
    pg = pgserver.server()
    u = pg.new_database()
    yield u
    pg.drop_database(u)


@pytest.fixture
def reg(url: str) -> Iterator[Registry]:
    r = Registry(url)
    yield r
    r.close()


def raw_contents(reg: Registry, tmp_path: Path) -> bytes:
    """Everything the database holds, as bytes: the SQLite file and its WAL, or every row
    of every table of the PostgreSQL database."""
    if reg.is_sqlite:
        raw = (tmp_path / "reg.sqlite3").read_bytes()
        for wal in tmp_path.glob("*-wal"):
            raw += wal.read_bytes()
        return raw
    out = []
    with reg.engine.connect() as conn:
        for table in metadata.sorted_tables:
            out += [repr(tuple(r)) for r in conn.execute(sa.select(table)).all()]
    return "\n".join(out).encode()


def add(reg: Registry, key: str = "k1", owner: str = "ann", **kw: object) -> str:
    return reg.add_run(owner=owner, model="tiny", request={"model": "tiny"},
                       request_hash=key, **kw).id  # type: ignore[arg-type]


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    reg = Registry(sqlite_url(tmp_path / "reg.sqlite3"))
    add(reg)
    reg.close()
    con = sqlite3.connect(tmp_path / "reg.sqlite3")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_tokens_are_stored_hashed_and_revocable(reg: Registry, tmp_path: Path) -> None:
    assert not reg.has_tokens()
    rec, token = reg.create_token("ann")
    assert token.startswith("rtw_") and len(token) > 40
    assert reg.has_tokens() and reg.owner_of(token) == "ann"
    assert reg.owner_of(token + "x") is None
    raw = raw_contents(reg, tmp_path)
    assert token.encode() not in raw
    assert hash_token(token).encode() in raw
    assert reg.revoke_token(rec.id) == 1
    assert reg.owner_of(token) is None and not reg.has_tokens()
    assert reg.revoke_token("ann") == 0
    with pytest.raises(RegistryError, match="token name"):
        reg.create_token("no spaces please")


def test_the_known_token_answer_is_the_last_read_while_fresh(reg: Registry) -> None:
    """What a request may learn without reading the database: the last answer, within its
    age, and nothing after a token is made or revoked here or the answer is too old."""
    assert reg.known_tokens(60) is None  # never read
    assert not reg.has_tokens(60)
    assert reg.known_tokens(60) is False and reg.known_tokens(0) is None
    rec, _ = reg.create_token("ann")
    assert reg.known_tokens(60) is None  # made here: read again
    assert reg.has_tokens(60) and reg.known_tokens(60) is True
    reg.revoke_token(rec.id)
    assert reg.known_tokens(60) is None and not reg.has_tokens(60)


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


def test_open_mode_runs_of_an_older_registry_go_to_the_open_owner(url: str) -> None:
    """Older registries named the open owner ``local``, a name a token can have: the runs
    made before any token of that name existed were open-mode runs."""
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


def test_the_backend_is_the_one_asked_for(reg: Registry, request: pytest.FixtureRequest) -> None:
    """The parametrisation really reaches PostgreSQL (not a SQLite fallback)."""
    with reg.engine.connect() as conn:
        name = conn.dialect.name
    assert name == request.node.callspec.params["url"]
    if name == "postgresql":
        with reg.engine.connect() as conn:
            assert "PostgreSQL" in conn.execute(sa.text("select version()")).scalar_one()


def test_times_come_back_in_utc(reg: Registry) -> None:
    rec = reg.get_run(add(reg))
    assert rec.created_at.tzinfo is not None
    assert rec.created_at.utcoffset() == dt.timedelta(0)
    assert abs(rec.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def test_a_claim_has_one_holder_until_it_is_released_or_lapses(reg: Registry) -> None:
    assert reg.claim("k1", "a", 60) and reg.holder_of("k1") == "a"
    assert not reg.claim("k1", "b", 60)
    assert reg.claim("k1", "a", 60)  # a holder renews its own claim
    assert reg.others_alive("b") and not reg.others_alive("a")
    reg.release("k1", "b")  # only the holder releases
    assert reg.holder_of("k1") == "a"
    reg.release("k1", "a")
    assert reg.holder_of("k1") is None and reg.claim("k1", "b", 60)
    assert reg.claim("k2", "c", -1)  # a lease that has lapsed already
    assert reg.holder_of("k2") is None and reg.claim("k2", "b", 60)
    assert reg.renew("b", 60) == 2 and sorted(reg.holders()) == ["b"]
    assert reg.drop_claims("b") == 2 and reg.holders() == []


def test_only_orphaned_computations_are_requeued_and_offered(reg: Registry) -> None:
    """Another live process's computations are left to it at a restart; a lapsed lease's
    are offered to whoever looks (they are not lost)."""
    a, b, c = add(reg, "held"), add(reg, "lapsed"), add(reg, "free")
    for key in ("held", "lapsed", "free"):
        reg.mark_running(key)
    assert reg.claim("held", "alive", 60) and reg.claim("lapsed", "dead", -1)
    assert reg.requeue() == 2
    assert reg.get_run(a).status == "running" and reg.get_run(a).attempts == 0
    assert reg.get_run(b).status == "queued" and reg.get_run(c).attempts == 1
    assert reg.orphaned_keys() == ["lapsed", "free"]
    reg.finish("free", "done")
    assert reg.orphaned_keys() == ["lapsed"]


def test_concurrent_claims_have_exactly_one_winner(url: str) -> None:
    """Eight threads, each with its own registry (as separate service processes would have
    on PostgreSQL), claim the same keys at once: each key has exactly one holder."""
    n = 8 if not url.startswith("sqlite") else 4
    regs = [Registry(url) for _ in range(n)]
    keys = [f"k{i}" for i in range(20)]
    wins: dict[str, list[int]] = {k: [] for k in keys}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def claim(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for k in keys:
                if regs[i].claim(k, f"h{i}", 60):
                    wins[k].append(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in regs:
        r.close()
    assert not errors, errors
    assert all(len(w) == 1 for w in wins.values()), wins


def test_admission_limits_hold_across_registries(url: str) -> None:
    """Runs submitted at once through several registries on one database (several service
    processes) never exceed the queue's limit."""
    shared = url.startswith("sqlite")  # SQLite serves one process: one registry, threads
    regs = [Registry(url)] * 6 if shared else [Registry(url) for _ in range(6)]
    admitted: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(len(regs))

    def submit(i: int) -> None:
        barrier.wait(timeout=30)
        for j in range(5):
            try:
                regs[i].add_run(owner=f"o{i}", model="tiny", request={}, queue_max=7,
                                request_hash=f"k{i}-{j}")
                admitted.append(f"k{i}-{j}")
            except QueueFull:
                refused.append(f"k{i}-{j}")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(regs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(admitted) == 7 and len(refused) == 23
    assert regs[0].active_computations() == 7
    for r in set(regs):
        r.close()


def test_writers_of_one_process_never_meet_a_locked_sqlite_database(tmp_path: Path) -> None:
    """Threads of one service process writing at once (a request's run, another's claim,
    progress, the end of a computation) take turns without SQLite's busy handler, which
    sleeps between tries: with no busy timeout at all, none of them finds the database
    locked."""
    reg = Registry(sqlite_url(tmp_path / "reg.sqlite3"))
    reg.engine.dispose()
    sa.event.listen(reg.engine, "connect",
                    lambda con, _rec: con.execute("PRAGMA busy_timeout=0"))
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def write(i: int) -> None:
        start.wait()
        try:
            for j in range(40):
                key = f"k{i}-{j}"
                reg.add_run(owner="o", model="m", request={"i": i}, request_hash=key)
                reg.claim(key, f"h{i}", 30)
                reg.mark_running(key)
                reg.set_progress(key, 0.5)
                reg.finish(key, "done")
                reg.release(key, f"h{i}")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reg.close()
    assert errors == []
    assert Registry(sqlite_url(tmp_path / "reg.sqlite3")).counts()["done"] == 6 * 40
