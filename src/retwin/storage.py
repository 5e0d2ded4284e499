"""Result files: one tidy table per kind (series, flows, kpis) plus a JSON manifest.

A run directory is written next to its final place and renamed into it when complete, so a
reader never sees half a result and an interrupted write leaves nothing behind. It takes the
place of nothing but an empty folder or, when asked, an earlier result directory (told by its
manifest, and holding nothing else): see :mod:`retwin._files`.

**Deferred tables.** The tables made from the runs' daily records (:data:`DEFERRABLE`:
``series``, ``flows``, ``monthly``, ``stage_output``) may be left out of a result directory
(``save_result(..., defer=...)``) and written when they are first needed
(:func:`complete_result`), from the same runs made again: results are deterministic, so the
tables are those the first write would have made. The manifest names them under
``"deferred"`` until they are written; each is written whole (:func:`retwin._files.
atomic_write`), then the manifest is replaced, so an interrupted completion leaves a
directory that reads as before and is completed again. :func:`read_table` of a deferred
table not written yet raises :class:`TableDeferred`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from retwin._files import atomic_write, check_output_dir, is_temp_name, output_dir
from retwin.engine.run import versions
from retwin.results import ReplicationSet, RunResult
from retwin.scenario.load import scenario_hash, scenario_texts

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEFERRABLE", "TableDeferred", "check_result_dir", "complete_result",
           "deferred_tables", "is_result_dir", "read_table", "rerun_replications",
           "save_result"]

Format = Literal["parquet", "csv"]

#: Tables :func:`save_result` may leave for :func:`complete_result`: those made from the
#: runs' daily records. ``series`` and ``flows`` need the first replication again;
#: ``monthly`` and ``stage_output`` every replication (their bands span them).
DEFERRABLE: tuple[str, ...] = ("series", "flows", "monthly", "stage_output")
_FIRST_ONLY = frozenset({"series", "flows"})


class TableDeferred(FileNotFoundError):
    """A table a result directory defers (see the module) and has not written yet."""


#: Arrow schemas (pandas metadata included) of frames converted before, per column labels
#: and dtypes: the results of one model have tables of a few shapes only.
_SCHEMAS: dict[tuple[tuple[Any, ...], tuple[str, ...]], Any] = {}
_SCHEMAS_KEPT = 256


def _plain(dtype: Any) -> bool:
    """Whether a column's pandas metadata follows from its dtype alone: numbers, booleans,
    times and text do; objects and categories do not (it depends on what they hold)."""
    import pandas as pd

    return dtype.kind in "biufmM" or isinstance(dtype, pd.StringDtype)


def _arrow_table(df: pd.DataFrame) -> Any:
    """``pa.Table.from_pandas(df, preserve_index=False)``, converted in this thread (pyarrow
    would start a pool of threads for each table of many rows, which costs more than it
    saves here). A frame of a shape converted before reuses that schema and has only its
    columns converted: pandas' look at the column labels, most of the cost of a small
    table, is spared; the table is the same, metadata and all. A column that converts to
    another type than the schema's is converted as pandas would."""
    import pyarrow as pa

    columns = list(df.items())
    shape = (tuple(c for c, _ in columns), tuple(str(col.dtype) for _, col in columns))
    schema = _SCHEMAS.get(shape)
    if schema is not None and all(_plain(col.dtype) for _, col in columns):
        try:
            arrays = [pa.array(col.array, from_pandas=True) for _, col in columns]
        except (pa.ArrowException, TypeError, ValueError):
            arrays = []
        if len(arrays) == len(schema) and all(
                a.type == f.type for a, f in zip(arrays, schema, strict=True)):
            return pa.Table.from_arrays(arrays, schema=schema)
    t = pa.Table.from_pandas(df, preserve_index=False, nthreads=1)
    if len(_SCHEMAS) >= _SCHEMAS_KEPT:
        _SCHEMAS.clear()
    _SCHEMAS[shape] = t.schema
    return t


#: Tables of at most this many rows (a run's KPIs, summary, difference, targets,
#: bottlenecks) are written without dictionary pages or column statistics.
SMALL_TABLE_ROWS = 10_000


def _parquet(df: pd.DataFrame, where: Any) -> None:
    """``df.to_parquet(where, index=False)`` (:func:`_arrow_table`).

    A small table (:data:`SMALL_TABLE_ROWS`) is written without dictionary pages or
    min/max statistics: it is one row group in one file, so statistics could spare a
    reader nothing, and its text compresses as well without a dictionary. That makes the
    five tables of a what-if's answer 40 % cheaper to write (1.46 -> 0.87 ms) and 3 %
    larger (95 -> 98 KB); the data read back is the same."""
    import pyarrow.parquet as pq

    t = _arrow_table(df)
    if t.num_rows <= SMALL_TABLE_ROWS:
        pq.write_table(t, where, use_dictionary=False, write_statistics=False)
    else:
        pq.write_table(t, where)


def _bytes(df: pd.DataFrame, fmt: Format) -> bytes:
    if fmt == "parquet":
        import io

        buf = io.BytesIO()
        _parquet(df, buf)
        return buf.getvalue()
    return df.to_csv(index=False).encode("utf-8")


def _write(df: pd.DataFrame, path: Path, fmt: Format) -> str:
    name = f"{path.name}.{fmt}"
    target = path.with_name(name)
    if fmt == "parquet":
        _parquet(df, target)
    else:
        df.to_csv(target, index=False)
    return name


@functools.cache
def _versions() -> dict[str, str]:
    """The versions of the packages this process runs (they do not change while it runs;
    reading them from the installed metadata costs more than a small table)."""
    return versions()


def _deferrable(result: RunResult | ReplicationSet) -> dict[str, Callable[[], pd.DataFrame]]:
    """How each deferrable table is made from ``result``."""
    first = result.first if isinstance(result, ReplicationSet) else result
    if isinstance(result, ReplicationSet):
        monthly, stage = (lambda: result.monthly_bands), (lambda: result.stage_output)
    else:
        monthly, stage = first.monthly, first.stage_output
    return {"series": first.series, "flows": first.flows, "monthly": monthly,
            "stage_output": stage}


#: The files of a result directory besides its tables.
_META_FILES = ("manifest.json", "scenario.json")


def _not_result_files(path: Path) -> list[str]:
    """The entries of folder ``path`` that are not part of a result directory written by
    :func:`save_result` (all of them when its ``manifest.json`` is not one)."""
    try:
        with os.scandir(path) as it:
            entries = {e.name: e.is_file(follow_symlinks=False) for e in it}
    except OSError:
        return ["(unreadable)"]
    allowed: set[str] = set()
    manifest = path / "manifest.json"
    try:
        if entries.get("manifest.json"):
            m = json.loads(manifest.read_text(encoding="utf-8"))
            files = m.get("files") if isinstance(m, dict) else None
            if (isinstance(files, list) and all(isinstance(f, str) for f in files)
                    and {"scenario_hash", "versions"} <= m.keys()):
                allowed = {*files, *_META_FILES, *_deferred_files(m)}
    except (OSError, ValueError):
        pass
    return sorted(n for n, is_file in entries.items() if n not in allowed or not is_file)


def is_result_dir(path: str | Path) -> bool:
    """True when ``path`` is a result directory written by :func:`save_result`: its
    ``manifest.json`` is one, and it holds nothing but the files that manifest lists."""
    d = Path(path)
    return d.is_dir() and (d / "manifest.json").is_file() and not _not_result_files(d)


def check_result_dir(out_dir: str | Path, *, overwrite: bool = True) -> None:
    """Raise :class:`~retwin.errors.OutputError` unless :func:`save_result` could write to
    ``out_dir`` (call it before a long run)."""
    check_output_dir(out_dir, foreign=_not_result_files, force=overwrite, what="result")


def save_result(
    result: RunResult | ReplicationSet,
    out_dir: str | Path,
    *,
    fmt: Format = "parquet",
    difference: pd.DataFrame | None = None,
    baseline_hash: str | None = None,
    changes: list[dict[str, Any]] | None = None,
    overwrite: bool = True,
    notes: list[str] | None = None,
    defer: Iterable[str] = (),
) -> Path:
    """Write ``series``, ``flows``, ``monthly``, ``stage_output``, ``kpis`` (and
    ``summary``, ``difference``, ``targets``, ``bottlenecks``) plus ``manifest.json`` into
    ``out_dir``; returns it.

    ``series`` (daily) and ``flows`` come from the first replication; ``monthly`` holds the
    monthly series (with ``mean, p5, p50, p95`` across replications for a replication set);
    ``stage_output`` the monthly output per stage, its band taken across the replications'
    stage totals (:meth:`~retwin.results.RunResult.stage_output`);
    ``kpis`` holds every replication's annual KPIs with a ``replication`` column. The
    manifest keeps ``notes``: plain sentences about the run (a what-if's changes that did not
    bind, :func:`retwin.whatif.binding_notes`).

    ``out_dir`` must be missing or an empty folder, or, with ``overwrite``, an earlier
    result directory (:func:`is_result_dir`), which is replaced only once the new one is
    complete; anything else raises :class:`~retwin.errors.OutputError` and is left as it is.

    ``defer`` names tables of :data:`DEFERRABLE` to leave out for now: the manifest lists
    them under ``"deferred"``, and :func:`complete_result` writes them when they are needed.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format(={fmt!r}) must be parquet or csv")
    later = sorted(set(defer))
    unknown = [t for t in later if t not in DEFERRABLE]
    if unknown:
        raise ValueError(f"defer(={unknown!r}) may name only {', '.join(DEFERRABLE)}")
    first = result.first if isinstance(result, ReplicationSet) else result
    with output_dir(out_dir, foreign=_not_result_files, force=overwrite,
                    what="result") as tmp:
        files = [_write(make(), tmp / name, fmt)
                 for name, make in _deferrable(result).items() if name not in later]
        if isinstance(result, ReplicationSet):
            import pandas as pd

            kpis = pd.concat(
                [f.assign(replication=r) for r, f in enumerate(result.kpi_frames)],
                ignore_index=True,
            )
            files.append(_write(result.summary, tmp / "summary", fmt))
            replications = len(result.kpi_frames)
        else:
            kpis = first.kpis.assign(replication=0)
            replications = 1
        files.append(_write(kpis, tmp / "kpis", fmt))
        files.append(_write(first.target_table, tmp / "targets", fmt))
        files.append(_write(first.bottlenecks, tmp / "bottlenecks", fmt))
        if difference is not None:
            files.append(_write(difference, tmp / "difference", fmt))
        sc = first.compiled.scenario
        digest, tree = scenario_texts(sc)  # the hash, and the tree's compact JSON
        manifest = {
            "scenario": sc.name,
            "scenario_hash": digest,
            "baseline_hash": baseline_hash,
            "seed": first.seed,
            "replications": replications,
            "changes": changes or [],
            "notes": notes or [],
            "start": sc.start.isoformat(),
            "end": sc.end.isoformat(),
            "versions": _versions(),
            "format": fmt,
            "files": sorted(files),
            "mass_balance_closes": first.balance.closes,
        }
        if later:
            manifest["deferred"] = later
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False),
                                           encoding="utf-8")
        (tmp / "scenario.json").write_text(tree, encoding="utf-8")
    return Path(out_dir)


def _manifest(run_dir: Path) -> dict[str, Any]:
    m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(m, dict):
        raise ValueError(f"{run_dir / 'manifest.json'} is not a result's manifest")
    return m


def _deferred_files(m: dict[str, Any]) -> list[str]:
    later = m.get("deferred") or []
    fmt = m.get("format", "parquet")
    return [f"{t}.{fmt}" for t in later if isinstance(t, str) and t in DEFERRABLE]


def deferred_tables(run_dir: str | Path) -> list[str]:
    """The tables result directory ``run_dir`` defers and has not written yet (empty for a
    complete result)."""
    d = Path(run_dir)
    m = _manifest(d)
    fmt = m.get("format", "parquet")
    return [t for t in m.get("deferred") or [] if t in DEFERRABLE
            and not (d / f"{t}.{fmt}").is_file()]


def rerun_replications(run_dir: str | Path) -> int:
    """How many replications (from the first) :func:`complete_result` needs run again to
    write what ``run_dir`` defers: none for a complete result, one for ``series`` and
    ``flows``, every replication for ``monthly`` and ``stage_output``."""
    d = Path(run_dir)
    later = deferred_tables(d)
    if not later:
        return 0
    if set(later) <= _FIRST_ONLY:
        return 1
    return int(_manifest(d)["replications"])


def complete_result(run_dir: str | Path, result: RunResult | ReplicationSet) -> list[str]:
    """Write the tables result directory ``run_dir`` defers, made from ``result``: the
    same scenario, seed and (for ``monthly`` and ``stage_output``) replications run again.
    Returns the tables written.

    Each table is written whole, then the manifest is replaced by one that lists it, so a
    reader sees a table whole or not at all, and an interrupted completion is simply done
    again. Temporary files an interrupted write left are removed first. One writer at a time:
    the caller serialises completions of one directory. A ``result`` of another scenario,
    seed or number of replications raises ValueError and writes nothing.
    """
    d = Path(run_dir)
    m = _manifest(d)
    later = deferred_tables(d)
    if isinstance(result, ReplicationSet) and not any(
            str(f).startswith("summary.") for f in m.get("files", [])):
        result = result.first  # it was saved from one run: its tables are that run's
    first = result.first if isinstance(result, ReplicationSet) else result
    n = (len(result.seeds) or len(result.kpi_frames)
         if isinstance(result, ReplicationSet) else 1)
    sc_hash = scenario_hash(first.compiled.scenario)
    if sc_hash != m.get("scenario_hash") or first.seed != m.get("seed"):
        raise ValueError(f"{d}: the runs given are of another scenario or seed "
                         f"(scenario {sc_hash[:12]}, seed {first.seed}); nothing written")
    if not set(later) <= _FIRST_ONLY and n != int(m["replications"]):
        raise ValueError(f"{d}: {', '.join(later)} need all {m['replications']} "
                         f"replications, {n} given; nothing written")
    for entry in os.listdir(d):  # what an interrupted write left
        if is_temp_name(entry):
            with contextlib.suppress(OSError):
                os.unlink(d / entry)
    fmt: Format = m.get("format", "parquet")
    makers = _deferrable(result)
    for name in later:
        atomic_write(d / f"{name}.{fmt}", _bytes(makers[name](), fmt))
    written = {f"{t}.{fmt}" for t in m.get("deferred") or [] if (d / f"{t}.{fmt}").is_file()}
    m["files"] = sorted(set(m.get("files", [])) | written)
    m.pop("deferred", None)
    atomic_write(d / "manifest.json",
                 json.dumps(m, indent=2, ensure_ascii=False).encode("utf-8"))
    return later


def read_table(run_dir: str | Path, kind: str) -> pd.DataFrame:
    """Read one table (``series``, ``flows``, ``kpis``…) of a saved run; a table it defers
    and has not written yet raises :class:`TableDeferred` (see :func:`complete_result`)."""
    import pandas as pd

    d = Path(run_dir)
    for ext, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        f = d / f"{kind}.{ext}"
        if f.is_file():
            return reader(f)
    later: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        later = deferred_tables(d)
    if kind in later:
        raise TableDeferred(f"{d} has not written its {kind} table yet (deferred; "
                            "complete_result writes it)")
    raise FileNotFoundError(f"{d} has no {kind} table")
