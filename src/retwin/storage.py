"""Result files: one tidy table per kind (series, flows, kpis) plus a JSON manifest.

A run directory is written next to its final place and renamed into it when complete, so a
reader never sees half a result and an interrupted write leaves nothing behind. It takes the
place of nothing but an empty folder or, when asked, an earlier result directory (told by its
manifest, and holding nothing else): see :mod:`retwin._files`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from retwin._files import check_output_dir, output_dir
from retwin.engine.run import versions
from retwin.results import ReplicationSet, RunResult
from retwin.scenario.load import scenario_hash

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_result_dir", "is_result_dir", "read_table", "save_result"]

Format = Literal["parquet", "csv"]


def _write(df: pd.DataFrame, path: Path, fmt: Format) -> str:
    name = f"{path.name}.{fmt}"
    target = path.with_name(name)
    if fmt == "parquet":
        df.to_parquet(target, index=False)
    else:
        df.to_csv(target, index=False)
    return name


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
                allowed = {*files, *_META_FILES}
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
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format(={fmt!r}) must be parquet or csv")
    first = result.first if isinstance(result, ReplicationSet) else result
    with output_dir(out_dir, foreign=_not_result_files, force=overwrite,
                    what="result") as tmp:
        files = [
            _write(first.series(), tmp / "series", fmt),
            _write(first.flows(), tmp / "flows", fmt),
        ]
        if isinstance(result, ReplicationSet):
            files.append(_write(result.monthly_bands, tmp / "monthly", fmt))
            files.append(_write(result.stage_output, tmp / "stage_output", fmt))
        else:
            files.append(_write(first.monthly(), tmp / "monthly", fmt))
            files.append(_write(first.stage_output(), tmp / "stage_output", fmt))
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
        manifest = {
            "scenario": sc.name,
            "scenario_hash": scenario_hash(sc),
            "baseline_hash": baseline_hash,
            "seed": first.seed,
            "replications": replications,
            "changes": changes or [],
            "notes": notes or [],
            "start": sc.start.isoformat(),
            "end": sc.end.isoformat(),
            "versions": versions(),
            "format": fmt,
            "files": sorted(files),
            "mass_balance_closes": first.balance.closes,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False),
                                           encoding="utf-8")
        (tmp / "scenario.json").write_text(
            json.dumps(sc.model_dump(mode="json", by_alias=True), indent=1, ensure_ascii=False),
            encoding="utf-8",
        )
    return Path(out_dir)


def read_table(run_dir: str | Path, kind: str) -> pd.DataFrame:
    """Read one table (``series``, ``flows``, ``kpis``…) of a saved run."""
    import pandas as pd

    d = Path(run_dir)
    for ext, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        f = d / f"{kind}.{ext}"
        if f.is_file():
            return reader(f)
    raise FileNotFoundError(f"{d} has no {kind} table")
