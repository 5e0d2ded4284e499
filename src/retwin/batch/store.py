"""A study's output directory: Parquet datasets partitioned by point, written atomically.

Layout::

    OUT/manifest.json                     spec, its sha256, versions, every point's status
    OUT/points.parquet                    one row per point: id, seed, parameter values
    OUT/kpis/point=<id>/part-<k>.parquet  annual KPIs of chunk k of the point's replications
    OUT/monthly/point=<id>/part-<k>.parquet   (record: monthly or daily)
    OUT/daily/point=<id>/part-<k>.parquet     (record: daily)
    OUT/sensitivity.parquet               (one-at-a-time studies)

Every file is written under ``OUT/.tmp``, flushed to disk and renamed into place, so a file
that exists is whole; readers skip names starting with ``.`` or ``_``. A chunk's files are
written by the study's process or, on local workers that take every core, by the worker
that ran it, under ``OUT/.tmp`` (:func:`stage_parts`); the study's process then flushes
those to disk, renames them into place and records the chunk (:meth:`StudyDir.commit`).
A chunk counts as done when each of its files exists and its footer names this study, point
and replications: a restarted study skips those and runs the rest. The manifest is
rewritten (atomically) as points finish, at most once a second and always at the end; the
files are the record of what is done, the manifest its summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from retwin._files import (
    atomic_write,
    check_parents,
    is_temp_name,
    make_parents,
    new_temp_file,
    place_file,
    remove_created,
)
from retwin.batch import arrow
from retwin.batch.expand import Point, Task
from retwin.batch.tables import ChunkResult
from retwin.errors import OutputError, RetwinError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT", "StudyDir", "part_path", "points_table", "stage_parts", "write_atomic",
           "write_parts"]

FORMAT = "retwin-sweep/1"
_META = b"retwin"
_MANIFEST_EVERY_S = 1.0


def part_path(out: Path, kind: str, point_id: str, chunk: int) -> Path:
    return out / kind / f"point={point_id}" / f"part-{chunk}.parquet"


def write_atomic(out: Path, target: Path, write: Any) -> None:
    """Write ``target`` by calling ``write(binary file)`` on a temporary file under
    ``out/.tmp``, flushing it to disk and renaming it into place; nothing is left behind
    if the write fails or is interrupted. A failure of the file system is an
    :class:`~retwin.errors.OutputError` naming the study directory and the file."""
    tmp_dir = out / ".tmp"
    try:
        tmp_dir.mkdir(exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, write, tmp_dir=tmp_dir)
    except OSError as exc:
        rel = target.relative_to(out) if target.is_relative_to(out) else target
        raise OutputError(out, f"cannot write {rel}: {exc.strerror or exc}") from None


def _write_parquet(table: pa.Table) -> Any:
    # dictionary encoding for the label and integer columns only: a float column of run
    # results rarely repeats, and encoding it first as a dictionary and then falling back
    # costs about half of the write (a 166,000-row KPI chunk: 29 -> 14 ms, 6 % smaller)
    labels = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    # min/max statistics for the number and date columns only: every file of a study holds
    # every label of its table (each KPI, kind, id), so a reader could skip no file by the
    # strings' bounds, and computing them costs a fifth of the write
    bounded = [f.name for f in table.schema if not pa.types.is_string(f.type)]

    def write(fh: IO[bytes]) -> None:
        pq.write_table(table, fh, compression="zstd", use_dictionary=labels,
                       write_statistics=bounded)

    return write


def _footed(spec_sha256: str, result: ChunkResult,
            kinds: tuple[str, ...]) -> Iterator[tuple[str, pa.Table]]:
    """A finished chunk's tables in the order they are written (``kpis`` last), each footed
    with the study (``spec_sha256``), point and replications it holds (what a resumed study
    checks)."""
    task = result.task
    info = {"spec_sha256": spec_sha256, "point": task.point_id, "chunk": task.chunk,
            "first": task.first, "stop": task.stop}
    for kind in kinds:
        table = result.table(kind)
        if table is None or table.num_rows == 0:
            raise RetwinError(f"point {task.point_id} chunk {task.chunk} returned no "
                              f"{kind} rows")
        meta = dict(table.schema.metadata or {})
        meta[_META] = json.dumps({**info, "table": kind}).encode()
        yield kind, table.replace_schema_metadata(meta)


def write_parts(out: Path, spec_sha256: str, result: ChunkResult,
                kinds: tuple[str, ...]) -> None:
    """Write a finished chunk's files in place, each atomically (the study's process)."""
    task = result.task
    for kind, table in _footed(spec_sha256, result, kinds):
        write_atomic(out, part_path(out, kind, task.point_id, task.chunk),
                     _write_parquet(table))


def stage_parts(out: Path, spec_sha256: str, result: ChunkResult,
                kinds: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Write a finished chunk's files as temporary files under ``out/.tmp``: what a worker
    that shares the study's file system does (a :class:`~retwin.batch.tables.PartTask`).
    They are neither flushed nor in place: :meth:`StudyDir.commit` flushes each to disk and
    renames it into place in the study's process, so a worker never waits on the disk and
    no file is seen before it is whole. Returns ``(kind, temporary path)`` in writing order;
    nothing is left behind when a write fails."""
    task = result.task
    tmp_dir = out / ".tmp"
    staged: list[tuple[str, str]] = []
    kind = kinds[0]
    try:
        tmp_dir.mkdir(exist_ok=True)
        for kind, table in _footed(spec_sha256, result, kinds):
            fd, path = new_temp_file(tmp_dir, f"{kind}-{task.point_id}-{task.chunk}")
            name = str(path)
            staged.append((kind, name))
            with os.fdopen(fd, "wb") as fh:
                _write_parquet(table)(fh)
    except BaseException as exc:
        for _, name in staged:
            with contextlib.suppress(OSError):
                os.unlink(name)
        if isinstance(exc, OSError):
            rel = part_path(out, kind, task.point_id, task.chunk).relative_to(out)
            raise OutputError(out, f"cannot write {rel}: {exc.strerror or exc}") from None
        raise
    return tuple(staged)


def points_table(points: list[Point], names: list[str]) -> pa.Table:
    """One row per point: ``point, index, role, parameter, seed``, one column per parameter
    (its value at the point) and ``changes`` (the point's varied changes, as JSON)."""
    cols: dict[str, Any] = {
        "point": arrow.strings([p.id for p in points]),
        "index": arrow.numbers([p.index for p in points], pa.int64()),
        "role": arrow.strings([p.role for p in points]),
        "parameter": arrow.strings([p.parameter for p in points]),
        "seed": arrow.numbers([p.seed for p in points], pa.int64()),
    }
    for name in names:
        values = [p.values.get(name) for p in points]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            cols[name] = arrow.numbers(values, pa.int64() if all(isinstance(v, int)
                                                                 for v in values)
                                       else pa.float64())
        elif all(isinstance(v, bool) for v in values):
            cols[name] = arrow.numbers(values, pa.bool_())
        else:
            cols[name] = arrow.strings([None if v is None else str(v) for v in values])
    cols["changes"] = arrow.strings([json.dumps(list(p.changes), ensure_ascii=False)
                                     for p in points])
    return pa.table(cols)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class StudyDir:
    """The output directory of one study, held (locked) while the study writes to it."""

    def __init__(self, out: str | Path, *, spec: dict[str, Any], spec_sha256: str,
                 base: dict[str, Any], versions: dict[str, str], points: list[Point],
                 tasks: list[Task], kinds: tuple[str, ...], names: list[str]) -> None:
        self.out = Path(out)
        self.spec = spec
        self.spec_sha256 = spec_sha256
        self.base = base
        self.versions = versions
        self.points = points
        self.tasks = tasks
        self.kinds = kinds
        self.names = names
        self._lock_fh: IO[str] | None = None
        self._opened = False
        self._chunks = {p.id: 0 for p in points}
        for t in tasks:
            self._chunks[t.point_id] += 1
        self._done: dict[str, set[int]] = {p.id: set() for p in points}
        self._runs = {p.id: 0 for p in points}
        self._task_of = {(t.point_id, t.chunk): t for t in tasks}
        self._last_manifest = 0.0
        self.created = _now()
        self.status = "running"

    # --- opening -------------------------------------------------------------------------

    def __enter__(self) -> StudyDir:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def open(self) -> None:
        """Create or reopen the directory: refuse anything but a new or empty folder or this
        study's own (another study's results, a user's files), take the lock, clear
        temporary files, find the chunks already done, write the points table."""
        out = self.out
        created: list[Path] = []
        try:
            exists = out.exists()
        except OSError as exc:  # e.g. a name too long
            raise OutputError(out, f"cannot look at it: {exc.strerror or exc}") from None
        if exists:
            self._check_reopen()
        else:
            if os.path.islink(out):
                raise OutputError(out, "is a broken symbolic link")
            created = make_parents(out)
            try:
                out.mkdir()
            except OSError as exc:
                remove_created(created)
                raise OutputError(out, f"cannot create it: {exc.strerror or exc}") from None
            created.append(out)
        try:
            self._lock()
            shutil.rmtree(out / ".tmp", ignore_errors=True)
            self._scan()
            write_atomic(out, out / "points.parquet",
                         _write_parquet(points_table(self.points, self.names)))
            self.write_manifest(force=True)
        except BaseException:
            self.release()
            if created:  # nothing of the user's is in a folder made just now
                for name in ("manifest.json", "points.parquet", ".lock"):
                    with contextlib.suppress(OSError):
                        (out / name).unlink()
                remove_created(created)
            raise
        self._opened = True

    def _check_reopen(self) -> None:
        """An existing ``out`` may be this study's (resumed), empty, or what an interrupted
        start leaves (``.lock``, temporary files); anything else is refused untouched."""
        out = self.out
        if not out.is_dir():
            raise OutputError(out, "is a file, not a folder; name a new or empty folder")
        manifest_path = out / "manifest.json"
        if manifest_path.is_file():
            try:
                old = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OutputError(out, f"its manifest.json is unreadable ({exc}); name "
                                       "another output folder") from None
            if not isinstance(old, dict):
                raise OutputError(out, "holds no retwin sweep (its manifest.json is not one)")
            self._check_same_study(old)
            self.created = str(old.get("created", self.created))
        else:
            try:
                names = [e for e in os.listdir(out) if not self._leftover(e)]
            except OSError as exc:
                raise OutputError(out, f"cannot read it: {exc.strerror or exc}") from None
            if names:
                shown = ", ".join(sorted(names)[:3]) + (
                    f" and {len(names) - 3} more" if len(names) > 3 else "")
                raise OutputError(out, f"is not empty and holds no study manifest (it holds "
                                       f"{shown}); name a new or empty folder")
        check_parents(out / "manifest.json")  # writable?

    def _leftover(self, name: str) -> bool:
        """What a start interrupted before its manifest leaves: the lock file and temporary
        files of retwin's own naming."""
        p = self.out / name
        if name == ".lock":
            return p.is_file() and not p.is_symlink()
        if name == ".tmp" and p.is_dir() and not p.is_symlink():
            try:
                return all(is_temp_name(n) for n in os.listdir(p))
            except OSError:
                return False
        return False

    def _check_same_study(self, old: dict[str, Any]) -> None:
        if old.get("format") != FORMAT:
            raise OutputError(self.out, "holds no retwin sweep (manifest format "
                                        f"{old.get('format')!r}); name another output folder")
        if old.get("spec_sha256") != self.spec_sha256:
            raise OutputError(self.out, (
                f"holds the results of another study "
                f"({old.get('study')!r}, spec sha256 {str(old.get('spec_sha256'))[:12]}); "
                f"this spec hashes to {self.spec_sha256[:12]}: use another output directory, "
                "or delete it to start over"))
        base = old.get("base")
        old_base = base.get("scenario_sha256") if isinstance(base, dict) else None
        if old_base != self.base["scenario_sha256"]:
            raise OutputError(self.out, (
                f"the base model changed since the study in it started (scenario "
                f"sha256 {str(old_base)[:12]}, now {self.base['scenario_sha256'][:12]}): use "
                "another output directory, or delete it to start over"))

    def _lock(self) -> None:
        if fcntl is None:
            return
        fh = open(self.out / ".lock", "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RetwinError(f"another sweep is writing to {self.out}; wait for it or "
                              "choose another output directory") from None
        self._lock_fh = fh

    def release(self) -> None:
        fh, self._lock_fh = self._lock_fh, None
        self._opened = False
        if fh is not None:
            fh.close()
        shutil.rmtree(self.out / ".tmp", ignore_errors=True)

    def _files(self, kind: str) -> Iterator[tuple[str, int, Path]]:
        root = self.out / kind
        if not root.is_dir():
            return
        for d in root.iterdir():
            if not (d.is_dir() and d.name.startswith("point=")):
                continue
            pid = d.name[len("point="):]
            for f in d.glob("part-*.parquet"):
                try:
                    chunk = int(f.stem[len("part-"):])
                except ValueError:
                    continue
                yield pid, chunk, f

    def _valid(self, f: Path, task: Task, kind: str) -> bool:
        try:
            meta = pq.read_metadata(f)
            info = json.loads((meta.metadata or {}).get(_META, b"{}"))
        except (OSError, ValueError, pa.ArrowException):
            return False
        return (meta.num_rows > 0 and info.get("spec_sha256") == self.spec_sha256
                and info.get("point") == task.point_id and info.get("chunk") == task.chunk
                and info.get("first") == task.first and info.get("stop") == task.stop
                and info.get("table") == kind)

    def _scan(self) -> None:
        ok: dict[tuple[str, int], int] = {}
        for kind in self.kinds:
            for pid, chunk, f in self._files(kind):
                task = self._task_of.get((pid, chunk))
                if task is not None and self._valid(f, task, kind):
                    ok[(pid, chunk)] = ok.get((pid, chunk), 0) + 1
        for (pid, chunk), n in ok.items():
            if n == len(self.kinds):
                self._mark(self._task_of[(pid, chunk)])

    def _mark(self, task: Task) -> bool:
        """Record a chunk as done; True when its point is now complete."""
        done = self._done[task.point_id]
        if task.chunk not in done:
            done.add(task.chunk)
            self._runs[task.point_id] += task.runs
        return len(done) == self._chunks[task.point_id]

    # --- state ---------------------------------------------------------------------------

    def is_done(self, task: Task) -> bool:
        return task.chunk in self._done[task.point_id]

    def todo(self) -> list[Task]:
        return [t for t in self.tasks if not self.is_done(t)]

    def point_done(self, point_id: str) -> bool:
        return len(self._done[point_id]) == self._chunks[point_id]

    @property
    def points_done(self) -> int:
        return sum(self.point_done(p.id) for p in self.points)

    @property
    def runs_done(self) -> int:
        return sum(self._runs.values())

    # --- writing -------------------------------------------------------------------------

    def write_chunk(self, result: ChunkResult) -> bool:
        """Write a finished chunk's tables (``kpis`` last); True when its point is complete."""
        write_parts(self.out, self.spec_sha256, result, self.kinds)
        return self._record(result.task)

    def commit(self, task: Task, staged: tuple[tuple[str, str], ...]) -> bool:
        """Put the files a worker staged for ``task`` (:func:`stage_parts`) in place, each
        flushed to disk and renamed (``kpis`` last), and record the chunk as done; True when
        its point is complete. Only temporary files of this study's ``.tmp`` are taken."""
        tmp_dir = os.path.join(os.path.abspath(self.out), ".tmp")
        if [k for k, _ in staged] != list(self.kinds) or any(
                os.path.dirname(os.path.abspath(name)) != tmp_dir for _, name in staged):
            raise RetwinError(f"point {task.point_id} chunk {task.chunk}: its files were not "
                              f"staged in {tmp_dir}")
        for kind, name in staged:
            target = part_path(self.out, kind, task.point_id, task.chunk)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                place_file(name, target)
            except OSError as exc:
                raise OutputError(self.out, f"cannot write {target.relative_to(self.out)}: "
                                            f"{exc.strerror or exc}") from None
        return self._record(task)

    def _record(self, task: Task) -> bool:
        complete = self._mark(task)
        self.write_manifest()
        return complete

    def manifest(self) -> dict[str, Any]:
        pts = []
        for p in self.points:
            pts.append({
                "point": p.id, "index": p.index, "role": p.role, "parameter": p.parameter,
                "values": p.values, "changes": list(p.changes), "seed": p.seed,
                "chunks": self._chunks[p.id], "chunks_done": len(self._done[p.id]),
                "status": "done" if self.point_done(p.id) else "pending",
            })
        runs_total = sum(t.runs for t in self.tasks)
        return {
            "format": FORMAT,
            "study": self.spec["name"],
            "status": self.status,
            "spec": self.spec,
            "spec_sha256": self.spec_sha256,
            "base": self.base,
            "versions": self.versions,
            "tables": list(reversed(self.kinds)),
            "parameters": self.names,
            "created": self.created,
            "updated": _now(),
            "counts": {"points": len(self.points), "points_done": self.points_done,
                       "runs": runs_total, "runs_done": self.runs_done},
            "seeds": ("replication r of a point runs with "
                      "retwin.engine.run.replication_seed(point seed, r), as "
                      "`retwin run --seed <point seed> --replications N` does"),
            "points": pts,
        }

    def write_manifest(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_manifest < _MANIFEST_EVERY_S:
            return
        self._last_manifest = now
        text = json.dumps(self.manifest(), indent=1, ensure_ascii=False)
        write_atomic(self.out, self.out / "manifest.json",
                     lambda fh: fh.write(text.encode("utf-8")))

    def write_table(self, name: str, table: pa.Table) -> None:
        write_atomic(self.out, self.out / f"{name}.parquet", _write_parquet(table))

    def finish(self, status: str) -> None:
        self.status = status
        self.write_manifest(force=True)
