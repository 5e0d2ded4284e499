"""Result files: one tidy table per kind (series, flows, kpis) plus a JSON manifest.

A run directory is written next to its final place and renamed into it when complete, so a
reader never sees half a result and an interrupted write leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from retwin.engine.run import versions
from retwin.results import ReplicationSet, RunResult
from retwin.scenario.load import scenario_hash

__all__ = ["read_table", "save_result"]

Format = Literal["parquet", "csv"]


def _write(df: pd.DataFrame, path: Path, fmt: Format) -> str:
    name = f"{path.name}.{fmt}"
    target = path.with_name(name)
    if fmt == "parquet":
        df.to_parquet(target, index=False)
    else:
        df.to_csv(target, index=False)
    return name


def save_result(
    result: RunResult | ReplicationSet,
    out_dir: str | Path,
    *,
    fmt: Format = "parquet",
    difference: pd.DataFrame | None = None,
    baseline_hash: str | None = None,
    changes: list[dict[str, Any]] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``series``, ``flows``, ``monthly``, ``kpis`` (and ``summary``, ``difference``,
    ``targets``, ``bottlenecks``) plus ``manifest.json`` into ``out_dir``; returns it.

    ``series`` (daily) and ``flows`` come from the first replication; ``monthly`` holds the
    monthly series (with ``mean, p5, p50, p95`` across replications for a replication set);
    ``kpis`` holds every replication's annual KPIs with a ``replication`` column.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format(={fmt!r}) must be parquet or csv")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    first = result.first if isinstance(result, ReplicationSet) else result
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = [
            _write(first.series(), tmp / "series", fmt),
            _write(first.flows(), tmp / "flows", fmt),
        ]
        if isinstance(result, ReplicationSet):
            files.append(_write(result.monthly_bands, tmp / "monthly", fmt))
        else:
            files.append(_write(first.monthly(), tmp / "monthly", fmt))
        if isinstance(result, ReplicationSet):
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
            "start": sc.start.isoformat(),
            "end": sc.end.isoformat(),
            "versions": versions(),
            "format": fmt,
            "files": sorted(files),
            "mass_balance_closes": first.balance.closes,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        (tmp / "scenario.json").write_text(
            json.dumps(sc.model_dump(mode="json", by_alias=True), indent=1, ensure_ascii=False)
        )
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_table(run_dir: str | Path, kind: str) -> pd.DataFrame:
    """Read one table (``series``, ``flows``, ``kpis``…) of a saved run."""
    d = Path(run_dir)
    for ext, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
        f = d / f"{kind}.{ext}"
        if f.is_file():
            return reader(f)
    raise FileNotFoundError(f"{d} has no {kind} table")
