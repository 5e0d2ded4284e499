"""The run registry of the what-if service: runs and API tokens in one SQL database.

SQLite (in WAL mode) by default, for one service process; PostgreSQL
(``postgresql+psycopg://…``, the psycopg 3 driver of the ``api`` extra) for several service
processes sharing one registry. The schema uses only portable SQLAlchemy Core types.
Results themselves are not stored here but as Parquet directories next to the database
(:func:`retwin.storage.save_result`); a run row names its result by ``request_hash``, the
key of the computation it asks for, so identical requests share one stored result while each
owner keeps a run row of their own.

A run row is committed before the service answers, so an accepted run survives a crash:
at start-up the service finds every row still ``queued`` or ``running`` and runs it again.

**Several service processes on one database.** A computation is run by the process that
*claims* its key (a row of ``claims``: the key, the holder and when its lease expires;
:meth:`Registry.claim`). The holder renews its leases while it lives; the others wait for
the result. A holder that dies (``kill -9``) stops renewing, and once its lease has expired
another process claims the key and runs it again: no computation runs twice at once, none is
lost. Admission (the queue and per-owner limits, then the insert) is serialised across
processes by a PostgreSQL advisory lock (within one process by a lock of this object).

This module knows nothing of HTTP; the service maps its errors to status codes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from retwin import RetwinError

__all__ = [
    "ACTIVE",
    "FINISHED",
    "OPEN_OWNER",
    "STATUSES",
    "Finished",
    "OwnerLimit",
    "QueueFull",
    "Registry",
    "RegistryError",
    "RunNotFound",
    "RunRecord",
    "TokenRecord",
    "Unstorable",
    "hash_token",
    "request_key",
    "sqlite_url",
]

Status = Literal["queued", "running", "done", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
ACTIVE: tuple[str, ...] = ("queued", "running")
FINISHED: tuple[str, ...] = ("done", "failed", "cancelled")

#: Prefix of every token this module issues (helps secret scanners recognise a leak).
TOKEN_PREFIX = "rtw_"

#: The owner of every run submitted while the service runs open (no token, loopback only).
#: A token's owner is its name, and token names cannot hold ``:``: no token can ever be
#: this owner, whatever it is called.
OPEN_OWNER = "open:local"

#: What open-mode runs were owned by before owners were namespaced (a token could be
#: named like it): such rows are handed to :data:`OPEN_OWNER` when the registry opens.
LEGACY_OPEN_OWNER = "local"


class RegistryError(RetwinError):
    """Base class of the registry's errors."""


class Unstorable(RegistryError):
    """A request that could not be stored and read back as JSON (a lone surrogate in a
    string, a non-finite number)."""


class RunNotFound(RegistryError):
    """No run with this id (or none the caller may see)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found")


class QueueFull(RegistryError):
    """The service already holds as many queued and running computations as it may."""

    def __init__(self, limit: int, retry_after_s: int = 5) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the run queue is full ({limit} computations queued or running); retry later"
        )


class OwnerLimit(RegistryError):
    """The caller already has as many unfinished runs as one owner may have."""

    def __init__(self, owner: str, limit: int, retry_after_s: int = 5) -> None:
        self.owner = owner
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"{owner!r} already has {limit} runs queued or running (the per-token limit); "
            "wait for one to finish or cancel one"
        )


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(path)}"


def hash_token(token: str) -> str:
    """sha256 (hex) of an API token: what is stored; the token itself never is."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def request_key(payload: Mapping[str, Any]) -> str:
    """sha256 of a canonical JSON form of ``payload``: equal requests, equal keys."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _request_json(request: Mapping[str, Any]) -> str:
    """The stored form of a request: strict JSON that is valid UTF-8, or :class:`Unstorable`
    (a row whose text cannot be answered would break every read of it)."""
    try:
        text = json.dumps(dict(request), sort_keys=True, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise Unstorable(f"the request cannot be stored as JSON: {exc}") from None
    return text


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text),
    sa.Index("ix_runs_request_hash_status", "request_hash", "status"),
    sa.Index("ix_runs_owner_status", "owner", "status"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_created_at", "created_at"),
)

claims = sa.Table(
    "claims",
    metadata,
    sa.Column("request_hash", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_claims_holder", "holder"),
)

#: Key of the PostgreSQL advisory lock that serialises admission across service processes.
ADMISSION_LOCK = 0x72747731

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Index("ix_tokens_name", "name"),
)


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table."""

    id: str
    owner: str
    model: str
    request: dict[str, Any]
    request_hash: str
    status: str
    progress: float
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class TokenRecord:
    """One row of the ``tokens`` table (its hash, never the token)."""

    id: str
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Finished:
    """What :meth:`Registry.finish_runs` wrote: the runs it finished (id -> their
    ``started_at`` and ``progress`` as stored), with ``status`` and ``error``, at ``at``."""

    status: str
    error: str | None
    at: dt.datetime
    runs: dict[str, tuple[dt.datetime, float]]

    def apply(self, rec: RunRecord) -> RunRecord | None:
        """``rec`` as this finish left it, or ``None`` when it did not finish ``rec``."""
        row = self.runs.get(rec.id)
        if row is None:
            return None
        return replace(rec, status=self.status, error=self.error, finished_at=self.at,
                       started_at=row[0], progress=row[1])


def _admission(owner: str, request_hash: str) -> sa.Select[Any]:
    """One row: how many unfinished runs ``owner`` has, whether computation
    ``request_hash`` is already queued or running (a run of it joins it), and how many
    distinct computations are: what admitting a run checks, in one statement."""
    active = runs.c.status.in_(ACTIVE)
    mine = (sa.select(sa.func.count()).select_from(runs)
            .where(runs.c.owner == owner).where(active).scalar_subquery())
    joined = sa.exists().where(runs.c.request_hash == request_hash).where(active)
    busy = (sa.select(sa.func.count(sa.distinct(runs.c.request_hash)))
            .where(active).scalar_subquery())
    return sa.select(mine, joined, busy)


def _run(row: Any) -> RunRecord:
    m: Any = row._mapping
    created = _utc(m["created_at"])
    assert created is not None
    return RunRecord(
        id=m["id"], owner=m["owner"], model=m["model"], request=json.loads(m["request"]),
        request_hash=m["request_hash"], status=m["status"], progress=float(m["progress"]),
        attempts=int(m["attempts"]), created_at=created, started_at=_utc(m["started_at"]),
        finished_at=_utc(m["finished_at"]), error=m["error"],
    )


def _token(row: Any) -> TokenRecord:
    m: Any = row._mapping
    created = _utc(m["created_at"])
    assert created is not None
    return TokenRecord(id=m["id"], name=m["name"], created_at=created,
                       revoked_at=_utc(m["revoked_at"]))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; NORMAL keeps every committed transaction
    # across a crash of the process (not of the machine), at a fraction of FULL's cost.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Registry:
    """Runs and tokens in a SQL database (SQLite or PostgreSQL), through SQLAlchemy Core.

    Parameters
    ----------
    url
        A SQLAlchemy database URL. For SQLite the file's folder is created and the
        database is put in WAL mode.

    Notes
    -----
    Admission (the queue and per-owner limits checked, then the row inserted) holds a lock
    of this object, and on PostgreSQL an advisory lock too, so runs are admitted one at a
    time however many service processes share the database. Use PostgreSQL for more than
    one process: SQLite serves one machine.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        u = sa.engine.make_url(url)
        self.is_sqlite = u.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 16  # one connection per request thread, cheap for SQLite
            kwargs["max_overflow"] = 48
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10  # request threads, progress and the lease keeper
            kwargs["max_overflow"] = 30
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._writing = threading.Lock()
        metadata.create_all(self.engine)
        self._claim_open_runs()
        self._admit = threading.Lock()
        self._tokens_checked: tuple[float, bool] = (-1e9, False)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction. On SQLite, this process's writers take turns on a lock of
        this object: one that finds the database locked by another connection would wait
        in SQLite's busy handler, which sleeps (1, 2, 5, 10 ms…) instead of being woken
        when the lock is free. Other processes (the CLI) still meet the busy timeout."""
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._writing, self.engine.begin() as conn:
            yield conn

    def _claim_open_runs(self) -> None:
        """Hand the open-mode runs of an older registry (owner ``local``) to
        :data:`OPEN_OWNER`: every such run made before a token named ``local`` existed was
        an open-mode run (a token cannot submit before it exists). Idempotent."""
        first_token = (sa.select(sa.func.min(tokens.c.created_at))
                       .where(tokens.c.name == LEGACY_OPEN_OWNER).scalar_subquery())
        legacy = sa.and_(runs.c.owner == LEGACY_OPEN_OWNER,
                         sa.or_(first_token.is_(None), runs.c.created_at < first_token))
        with self.engine.connect() as conn:
            if conn.execute(sa.select(runs.c.id).where(legacy).limit(1)).first() is None:
                return
        with self._write() as conn:
            conn.execute(runs.update().where(legacy).values(owner=OPEN_OWNER))

    # --- tokens ------------------------------------------------------------------------

    def create_token(self, name: str) -> tuple[TokenRecord, str]:
        """A new API token for ``name`` (the owner of the runs it submits).

        Returns the record and the token itself, which is shown once and never stored.
        """
        _check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return self.add_token(name, token), token

    def add_token(self, name: str, token: str) -> TokenRecord:
        """Store the hash of a token given from outside (a bootstrap token); idempotent."""
        _check_name(name)
        h = hash_token(token)
        with self._write() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.token_hash == h)).first()
            if row is not None:
                if row._mapping["revoked_at"] is None and row._mapping["name"] == name:
                    return _token(row)
                raise RegistryError("this token is already registered (under another name "
                                    "or revoked); choose a new one")
            token_id, created = secrets.token_hex(6), _now()
            conn.execute(tokens.insert().values(id=token_id, name=name, token_hash=h,
                                                created_at=created, revoked_at=None))
        self._tokens_checked = (-1e9, False)
        return TokenRecord(token_id, name, created, None)

    def list_tokens(self) -> list[TokenRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tokens).order_by(tokens.c.created_at)).all()
        return [_token(r) for r in rows]

    def revoke_token(self, name_or_id: str) -> int:
        """Revoke the token with this id, or every active token of this name; returns how
        many were revoked."""
        with self._write() as conn:
            res = conn.execute(
                tokens.update()
                .where(sa.or_(tokens.c.id == name_or_id, tokens.c.name == name_or_id))
                .where(tokens.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        self._tokens_checked = (-1e9, False)
        return int(res.rowcount or 0)

    def known_tokens(self, max_age_s: float) -> bool | None:
        """:meth:`has_tokens` as last read, if that is at most ``max_age_s`` old (it reads
        nothing: fit for the event loop); else ``None``."""
        at, value = self._tokens_checked
        return value if max_age_s > 0 and time.monotonic() - at <= max_age_s else None

    def has_tokens(self, max_age_s: float = 0.0) -> bool:
        """Whether any token is active (then every request needs one); an answer up to
        ``max_age_s`` old may be reused (tokens are made by another process, the CLI)."""
        known = self.known_tokens(max_age_s)
        if known is not None:
            return known
        now = time.monotonic()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(tokens.c.id).where(tokens.c.revoked_at.is_(None)).limit(1)
            ).first()
        self._tokens_checked = (now, row is not None)
        return row is not None

    def owner_of(self, token: str) -> str | None:
        """The owner (token name) of an active token, else ``None``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(tokens.c.name)
                .where(tokens.c.token_hash == hash_token(token))
                .where(tokens.c.revoked_at.is_(None))
            ).first()
        return None if row is None else str(row[0])

    # --- runs --------------------------------------------------------------------------

    def add_run(
        self,
        *,
        owner: str,
        model: str,
        request: Mapping[str, Any],
        request_hash: str,
        status: Status = "queued",
        queue_max: int | None = None,
        owner_max: int | None = None,
    ) -> RunRecord:
        """Insert a run and commit it; returns the new row.

        A queued run is admitted only while fewer than ``queue_max`` distinct computations
        are queued or running (a run that joins one already under way adds none) and the
        owner has fewer than ``owner_max`` unfinished runs; else :class:`QueueFull` or
        :class:`OwnerLimit` is raised and nothing is written. ``status="done"`` records a
        run answered from a stored result. A request that is not strict, UTF-8-encodable
        JSON raises :class:`Unstorable`, and nothing is written.
        """
        now = _now()
        rec: dict[str, Any] = {
            "id": uuid.uuid4().hex, "owner": owner, "model": model,
            "request": _request_json(request),
            "request_hash": request_hash, "status": status, "progress": 0.0, "attempts": 0,
            "created_at": now, "started_at": None, "finished_at": None, "error": None,
        }
        if status == "done":
            rec.update(progress=1.0, started_at=now, finished_at=now)
        with self._admit, self._write() as conn:
            if status in ACTIVE and not self.is_sqlite:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADMISSION_LOCK)))
            if status in ACTIVE and (owner_max is not None or queue_max is not None):
                mine, joined, busy = conn.execute(_admission(owner, request_hash)).one()
                if owner_max is not None and mine >= owner_max:
                    raise OwnerLimit(owner, owner_max)
                if queue_max is not None and not joined and busy >= queue_max:
                    raise QueueFull(queue_max)
            conn.execute(runs.insert().values(**rec))
        return RunRecord(
            id=rec["id"], owner=owner, model=model, request=json.loads(rec["request"]),
            request_hash=request_hash, status=status, progress=rec["progress"], attempts=0,
            created_at=now, started_at=rec["started_at"], finished_at=rec["finished_at"],
            error=None,
        )

    def get_run(self, run_id: str, owner: str | None = None) -> RunRecord:
        """The run ``run_id``; with ``owner``, only if it belongs to them
        (:class:`RunNotFound` otherwise, so others cannot even learn that it exists)."""
        q = sa.select(runs).where(runs.c.id == run_id)
        if owner is not None:
            q = q.where(runs.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise RunNotFound(run_id)
        return _run(row)

    def list_runs(
        self,
        *,
        owner: str | None = None,
        status: Iterable[str] | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[RunRecord], int]:
        """Runs, newest first, and the total count matching the filters."""
        conds = []
        if owner is not None:
            conds.append(runs.c.owner == owner)
        if status:
            conds.append(runs.c.status.in_(list(status)))
        if model is not None:
            conds.append(runs.c.model == model)
        where = sa.and_(sa.true(), *conds)
        with self.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(runs).where(where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(runs).where(where)
                .order_by(runs.c.created_at.desc(), runs.c.id.desc())
                .limit(limit).offset(offset)
            ).all()
        return [_run(r) for r in rows], int(total)

    def active_keys(self) -> dict[str, list[RunRecord]]:
        """Unfinished runs grouped by computation key, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(runs).where(runs.c.status.in_(ACTIVE)).order_by(runs.c.created_at)
            ).all()
        out: dict[str, list[RunRecord]] = {}
        for r in rows:
            rec = _run(r)
            out.setdefault(rec.request_hash, []).append(rec)
        return out

    def has_active(self, request_hash: str) -> bool:
        """Whether any unfinished run waits for this computation."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(runs.c.id).where(runs.c.request_hash == request_hash)
                .where(runs.c.status.in_(ACTIVE)).limit(1)
            ).first()
        return row is not None

    def requeue(self) -> int:
        """At start-up: runs left ``running`` by a stopped service go back to ``queued``
        (their attempt counted); returns how many unfinished runs there are. Runs whose
        computation another live service process holds (:meth:`claim`) are left to it."""
        with self._write() as conn:
            held = (sa.select(claims.c.request_hash)
                    .where(claims.c.expires_at > self._clock(conn)))
            orphan = runs.c.request_hash.not_in(held)
            conn.execute(
                runs.update().where(runs.c.status == "running").where(orphan)
                .values(status="queued", progress=0.0, started_at=None)
            )
            conn.execute(
                runs.update().where(runs.c.status == "queued").where(orphan)
                .values(attempts=runs.c.attempts + 1)
            )
            n = conn.execute(
                sa.select(sa.func.count()).select_from(runs).where(runs.c.status == "queued")
            ).scalar_one()
        return int(n)

    # --- claims: which service process runs a computation --------------------------------

    def _clock(self, conn: sa.Connection) -> dt.datetime:
        """Now, by the database's clock on PostgreSQL (service processes on several machines
        then agree on when a lease expires), by this machine's on SQLite."""
        if self.is_sqlite:
            return _now()
        value = conn.execute(sa.select(sa.func.now())).scalar_one()
        return _utc(value) or _now()

    def claim(self, request_hash: str, holder: str, lease_s: float) -> bool:
        """Claim computation ``request_hash`` for ``holder`` for ``lease_s`` seconds: true
        if it is now ``holder``'s (free, expired, or already theirs), false while another
        holder's lease runs. At most one holder wins, however many try at once."""
        try:  # a new computation has no claim yet: one statement takes it
            with self._write() as conn:
                until = self._clock(conn) + dt.timedelta(seconds=lease_s)
                conn.execute(claims.insert().values(request_hash=request_hash, holder=holder,
                                                    expires_at=until))
            return True
        except sa.exc.IntegrityError:
            pass  # claimed before: still ours, lapsed, or another holder's
        with self._write() as conn:
            now = self._clock(conn)
            taken = conn.execute(
                claims.update().where(claims.c.request_hash == request_hash)
                .where(sa.or_(claims.c.holder == holder, claims.c.expires_at <= now))
                .values(holder=holder, expires_at=now + dt.timedelta(seconds=lease_s))
            ).rowcount
        return bool(taken)

    def renew(self, holder: str, lease_s: float) -> int:
        """Extend every lease of ``holder`` by ``lease_s`` seconds from now; returns how many
        it holds."""
        with self._write() as conn:
            until = self._clock(conn) + dt.timedelta(seconds=lease_s)
            n = conn.execute(claims.update().where(claims.c.holder == holder)
                             .values(expires_at=until)).rowcount
        return int(n or 0)

    def release(self, request_hash: str, holder: str) -> None:
        """``holder`` is done with computation ``request_hash``."""
        with self._write() as conn:
            conn.execute(claims.delete().where(claims.c.request_hash == request_hash)
                         .where(claims.c.holder == holder))

    def holder_of(self, request_hash: str) -> str | None:
        """Who holds a live lease on ``request_hash``, if anyone."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(claims.c.holder).where(claims.c.request_hash == request_hash)
                .where(claims.c.expires_at > self._clock(conn))
            ).first()
        return None if row is None else str(row[0])

    def holders(self) -> list[str]:
        """Every holder with a claim, live or lapsed."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(claims.c.holder).distinct()).all()
        return [str(r[0]) for r in rows]

    def drop_claims(self, holder: str) -> int:
        """Forget every claim of ``holder`` (a process known to be gone)."""
        with self._write() as conn:
            n = conn.execute(claims.delete().where(claims.c.holder == holder)).rowcount
        return int(n or 0)

    def others_alive(self, holder: str) -> bool:
        """Whether another holder has a live lease (another service process is computing)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(claims.c.holder).where(claims.c.holder != holder)
                .where(claims.c.expires_at > self._clock(conn)).limit(1)
            ).first()
        return row is not None

    def orphaned_keys(self) -> list[str]:
        """Computations that unfinished runs wait for and no live lease covers (their
        holder died, or nobody has claimed them yet), oldest run first."""
        with self.engine.connect() as conn:
            held = (sa.select(claims.c.request_hash)
                    .where(claims.c.expires_at > self._clock(conn)))
            rows = conn.execute(
                sa.select(runs.c.request_hash, sa.func.min(runs.c.created_at).label("t"))
                .where(runs.c.status.in_(ACTIVE))
                .where(runs.c.request_hash.not_in(held))
                .group_by(runs.c.request_hash).order_by("t")
            ).all()
        return [str(r[0]) for r in rows]

    def mark_running(self, request_hash: str, *, at: dt.datetime | None = None) -> None:
        """The computation ``request_hash`` has started (at ``at``, default now): its queued
        runs are running."""
        with self._write() as conn:
            conn.execute(
                runs.update().where(runs.c.request_hash == request_hash)
                .where(runs.c.status == "queued")
                .values(status="running", started_at=_now() if at is None else at)
            )

    def set_progress(self, request_hash: str, progress: float) -> None:
        """Progress (0..1) of a computation, shown on every run waiting for it."""
        with self._write() as conn:
            conn.execute(
                runs.update().where(runs.c.request_hash == request_hash)
                .where(runs.c.status.in_(ACTIVE))
                .values(status="running", progress=min(max(float(progress), 0.0), 1.0),
                        started_at=sa.func.coalesce(runs.c.started_at, _now()))
            )

    def finish(self, request_hash: str, status: Status, error: str | None = None) -> list[str]:
        """Finish every unfinished run of a computation; returns their ids."""
        return list(self.finish_runs(request_hash, status, error).runs)

    def finish_runs(self, request_hash: str, status: Status, error: str | None = None, *,
                    at: dt.datetime | None = None) -> Finished:
        """Finish every unfinished run of a computation; what was written (a waiting
        request answers from it without reading its run again). ``at``: the time its
        answer was given, before its result was stored; only the runs recorded by then are
        finished, at that time (else every run, now)."""
        if status not in FINISHED:
            raise ValueError(f"status(={status!r}) must be one of {', '.join(FINISHED)}")
        now = _now() if at is None else at
        with self._write() as conn:
            q = (sa.select(runs.c.id, runs.c.started_at, runs.c.progress)
                 .where(runs.c.request_hash == request_hash)
                 .where(runs.c.status.in_(ACTIVE)))
            if at is not None:
                q = q.where(runs.c.created_at <= at)
            rows = conn.execute(q).all()
            ids = [r[0] for r in rows]
            if ids:
                values: dict[str, Any] = {"status": status, "finished_at": now, "error": error,
                                          "started_at": sa.func.coalesce(runs.c.started_at, now)}
                if status == "done":
                    values["progress"] = 1.0
                conn.execute(runs.update().where(runs.c.id.in_(ids)).values(**values))
        return Finished(status=status, error=error, at=now, runs={
            str(r[0]): (_utc(r[1]) or now, 1.0 if status == "done" else float(r[2]))
            for r in rows})

    def cancel(self, run_id: str, owner: str | None = None) -> RunRecord:
        """Cancel an unfinished run (a finished one is returned unchanged)."""
        rec = self.get_run(run_id, owner)
        if rec.finished:
            return rec
        with self._write() as conn:
            conn.execute(
                runs.update().where(runs.c.id == run_id).where(runs.c.status.in_(ACTIVE))
                .values(status="cancelled", finished_at=_now())
            )
        return self.get_run(run_id, owner)

    def active_computations(self) -> int:
        """Distinct computations queued or running (the queue's depth)."""
        with self.engine.connect() as conn:
            n = conn.execute(
                sa.select(sa.func.count(sa.distinct(runs.c.request_hash)))
                .where(runs.c.status.in_(ACTIVE))
            ).scalar_one()
        return int(n)

    def counts(self) -> dict[str, int]:
        """Number of runs per status."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
            ).all()
        out = dict.fromkeys(STATUSES, 0)
        out.update({str(s): int(n) for s, n in rows})
        return out


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(ch.isalnum() or ch in "-_.@" for ch in name):
        raise RegistryError(
            f"token name(={name!r}) must be 1-64 letters, digits or - _ . @"
        )
