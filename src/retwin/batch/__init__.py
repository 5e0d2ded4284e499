"""Batch studies: sweeps, Monte Carlo and one-at-a-time sensitivity, locally or on Dask.

A study spec (YAML) names a base model, fixed changes, varied parameters, replications per
point and a seed; :func:`run_batch` expands it into points (pure, seeded: the same spec gives
the same points, ids and seeds everywhere), runs each point's replications in tasks on an
:class:`Executor` (this process, local processes, or a Dask cluster), and streams compact
tables to a Parquet dataset partitioned by point as tasks finish. A study interrupted and
started again skips what is done.

>>> from retwin.batch import run_batch                         # doctest: +SKIP
>>> res = run_batch("models/studies/quota-price-grid.yaml", "results/grid", workers=2)
>>> res.to_pandas(filter={"kpi": "value.group", "key": "total"})
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retwin.batch.executors import (
        DaskExecutor,
        Executor,
        ProcessExecutor,
        SerialExecutor,
        make_executor,
    )
    from retwin.batch.expand import (
        Point,
        Task,
        expand_points,
        grid_values,
        latin_hypercube,
        plan_tasks,
        point_id,
        point_seed,
    )
    from retwin.batch.sensitivity import kpi_means, sensitivity_table
    from retwin.batch.spec import KpiSelector, Range, StudySpec, VariedParameter, load_spec
    from retwin.batch.study import (
        BatchInterrupted,
        BatchProgress,
        BatchResult,
        Study,
        prepare_study,
        run_batch,
    )

# Each name is imported on first use: a worker process, which only needs the task function
# (:mod:`retwin.batch.tables`), never loads pandas or pyarrow's dataset layer.
_LAZY = {
    **dict.fromkeys(("DaskExecutor", "Executor", "ProcessExecutor", "SerialExecutor",
                     "make_executor"), "retwin.batch.executors"),
    **dict.fromkeys(("Point", "Task", "expand_points", "grid_values", "latin_hypercube",
                     "plan_tasks", "point_id", "point_seed"), "retwin.batch.expand"),
    **dict.fromkeys(("kpi_means", "sensitivity_table"), "retwin.batch.sensitivity"),
    **dict.fromkeys(("KpiSelector", "Range", "StudySpec", "VariedParameter", "load_spec"),
                    "retwin.batch.spec"),
    **dict.fromkeys(("BatchInterrupted", "BatchProgress", "BatchResult", "Study",
                     "prepare_study", "run_batch"), "retwin.batch.study"),
}

__all__ = [
    "BatchInterrupted",
    "BatchProgress",
    "BatchResult",
    "DaskExecutor",
    "Executor",
    "KpiSelector",
    "Point",
    "ProcessExecutor",
    "Range",
    "SerialExecutor",
    "Study",
    "StudySpec",
    "Task",
    "VariedParameter",
    "expand_points",
    "grid_values",
    "kpi_means",
    "latin_hypercube",
    "load_spec",
    "make_executor",
    "plan_tasks",
    "point_id",
    "point_seed",
    "prepare_study",
    "run_batch",
    "sensitivity_table",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retwin.batch' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
