"""A study's output directory: Parquet datasets partitioned by point, written atomically.

Layout::

    OUT/manifest.json                     spec, its sha256, versions, every point's status
    OUT/points.parquet                    one row per point: id, seed, parameter values
    OUT/kpis/point=<id>/part-<k>.parquet  annual KPIs of chunk k of the point's replications
    OUT/monthly/point=<id>/part-<k>.parquet   (record: monthly or daily)
    OUT/daily/point=<id>/part-<k>.parquet     (record: daily)
    OUT/sensitivity.parquet               (one-at-a-time studies)

A chunk run in pieces (the last chunks of a study on several workers, so that the workers
finish together) is stored as one file per piece, ``part-<k>.<offset>.parquet``, the offset
of the piece's first replication in the chunk written with as many digits as the chunk's
size: its files, read in their names' order, hold the rows of ``part-<k>.parquet``.

Every file is written under ``OUT/.tmp``, flushed to disk and renamed into place, so a file
that exists is whole; readers skip names starting with ``.`` or ``_``. A chunk's files are
written by the study's process or, on local workers that take every core, by the worker
that ran it, under ``OUT/.tmp`` (:func:`stage_parts`); the study's process then flushes
those to disk, renames them into place and records the chunk (:meth:`StudyDir.commit`).
A chunk counts as done when each of its files exists and its footer names this study, point
and replications (for a chunk in pieces: when its pieces' files cover its replications): a
restarted study skips those, removes the files of the others and runs them again. The manifest is
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
from dataclasses import replace
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


def piece_name(whole: Task, unit: Task) -> str:
    """The part of a file name that tells a piece of chunk ``whole`` (``unit``, replications
    ``first .. stop-1`` of it) from the chunk itself: ``""`` for the whole chunk, else
    ``.<offset>``, the offset of its first replication in the chunk, with as many digits as
    the chunk's size (so that a chunk's pieces sort by their replications)."""
    if (unit.first, unit.stop) == (whole.first, whole.stop):
        return ""
    if not whole.first <= unit.first < unit.stop <= whole.stop or unit.chunk != whole.chunk:
        raise RetwinError(f"point {whole.point_id} chunk {whole.chunk}: replications "
                          f"{unit.first}..{unit.stop - 1} are not a piece of it")
    return f".{unit.first - whole.first:0{len(str(whole.runs))}d}"


def part_path(out: Path, kind: str, point_id: str, chunk: int, piece: str = "") -> Path:
    """The file of table ``kind`` of chunk ``chunk`` of a point (of one of its pieces:
    :func:`piece_name`)."""
    return out / kind / f"point={point_id}" / f"part-{chunk}{piece}.parquet"


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
                kinds: tuple[str, ...], piece: str = "") -> None:
    """Write a finished chunk's (or piece's) files in place, each atomically (the study's
    process)."""
    task = result.task
    for kind, table in _footed(spec_sha256, result, kinds):
        write_atomic(out, part_path(out, kind, task.point_id, task.chunk, piece),
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


def _tiles(spans: list[tuple[int, int]], first: int, stop: int) -> bool:
    """Whether ``spans`` (sorted) cover ``first .. stop-1`` end to end, once each."""
    at = first
    for a, b in spans:
        if a != at:
            return False
        at = b
    return at == stop and bool(spans)


def _remove(out: Path, f: Path) -> None:
    try:
        f.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(out, f"cannot remove {f.relative_to(out)} (a file of an "
                               f"unfinished chunk): {exc.strerror or exc}") from None


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
        self._pieces: dict[tuple[str, int], list[tuple[int, int]]] = {}  # written so far
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

    def _files(self, kind: str) -> Iterator[tuple[str, int, str, Path]]:
        """The part files of table ``kind``: ``(point, chunk, piece, path)`` (``piece``:
        ``""`` for a whole chunk's file, else :func:`piece_name`'s)."""
        root = self.out / kind
        if not root.is_dir():
            return
        for d in root.iterdir():
            if not (d.is_dir() and d.name.startswith("point=")):
                continue
            pid = d.name[len("point="):]
            for f in d.glob("part-*.parquet"):
                chunk, dot, offset = f.stem[len("part-"):].partition(".")
                if not chunk.isdigit() or (dot and not offset.isdigit()):
                    continue
                yield pid, int(chunk), dot + offset, f

    def _covers(self, f: Path, task: Task, kind: str, piece: str) -> tuple[int, int] | None:
        """The replications ``(first, stop)`` file ``f`` holds of table ``kind`` of chunk
        ``task`` (``piece``: of which piece, by its name), or ``None`` when it is not a
        whole file of this study's that its name says it is."""
        try:
            meta = pq.read_metadata(f)
            info = json.loads((meta.metadata or {}).get(_META, b"{}"))
            span = int(info.get("first")), int(info.get("stop"))
        except (OSError, ValueError, TypeError, pa.ArrowException):
            return None
        if not (meta.num_rows > 0 and info.get("spec_sha256") == self.spec_sha256
                and info.get("point") == task.point_id and info.get("chunk") == task.chunk
                and info.get("table") == kind and task.first <= span[0] < span[1] <= task.stop):
            return None
        unit = replace(task, first=span[0], stop=span[1])
        return span if piece_name(task, unit) == piece else None

    def _scan(self) -> None:
        """Find the chunks already done (a whole file of each table, or pieces whose files
        of each table cover the chunk); remove the part files of the others (an interrupted
        chunk runs again, whole or in other pieces: none of its rows may stand twice)."""
        spans: dict[tuple[str, int], dict[tuple[int, int], set[str]]] = {}
        found: dict[tuple[str, int], list[tuple[str, Path]]] = {}
        for kind in self.kinds:
            for pid, chunk, piece, f in self._files(kind):
                task = self._task_of.get((pid, chunk))
                if task is None:
                    continue
                found.setdefault((pid, chunk), []).append((piece, f))
                span = self._covers(f, task, kind, piece)
                if span is not None:
                    spans.setdefault((pid, chunk), {}).setdefault(span, set()).add(kind)
        for at, files in found.items():
            task = self._task_of[at]
            full = sorted(s for s, kinds in spans.get(at, {}).items()
                          if len(kinds) == len(self.kinds))
            kept: bool | None = None  # None: not done; else whether it is kept in pieces
            if (task.first, task.stop) in full:
                kept = False
            elif _tiles(full, task.first, task.stop):
                kept = True
            if kept is not None:
                self._mark(task)
            for piece, f in files:  # all but the chunk's one record of its rows
                if kept is None or kept != bool(piece):
                    _remove(self.out, f)

    def _mark(self, task: Task) -> bool:
        """Record a (whole) chunk as done; True when its point is now complete."""
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
        """Write a finished chunk's (or piece's) tables (``kpis`` last); True when its point
        is complete."""
        write_parts(self.out, self.spec_sha256, result, self.kinds, self._piece(result.task))
        return self._record(result.task)

    def commit(self, task: Task, staged: tuple[tuple[str, str], ...]) -> bool:
        """Put the files a worker staged for ``task`` (a chunk or a piece of one;
        :func:`stage_parts`) in place, each flushed to disk and renamed (``kpis`` last), and
        record it as done; True when its point is complete. Only temporary files of this
        study's ``.tmp`` are taken."""
        tmp_dir = os.path.join(os.path.abspath(self.out), ".tmp")
        if [k for k, _ in staged] != list(self.kinds) or any(
                os.path.dirname(os.path.abspath(name)) != tmp_dir for _, name in staged):
            raise RetwinError(f"point {task.point_id} chunk {task.chunk}: its files were not "
                              f"staged in {tmp_dir}")
        piece = self._piece(task)
        for kind, name in staged:
            target = part_path(self.out, kind, task.point_id, task.chunk, piece)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                place_file(name, target)
            except OSError as exc:
                raise OutputError(self.out, f"cannot write {target.relative_to(self.out)}: "
                                            f"{exc.strerror or exc}") from None
        return self._record(task)

    def _piece(self, unit: Task) -> str:
        return piece_name(self._task_of[(unit.point_id, unit.chunk)], unit)

    def _record(self, unit: Task) -> bool:
        """Record a chunk, or a piece of one, as written; a chunk in pieces is done once its
        pieces cover it. True when its point is complete."""
        task = self._task_of[(unit.point_id, unit.chunk)]
        if unit != task:
            got = self._pieces.setdefault((task.point_id, task.chunk), [])
            got.append((unit.first, unit.stop))
            if not _tiles(sorted(got), task.first, task.stop):
                return False
            del self._pieces[(task.point_id, task.chunk)]
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
