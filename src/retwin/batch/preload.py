"""What a fork server of local workers loads before it forks any (see
:class:`~retwin.batch.executors.ProcessExecutor`, ``start_method="forkserver"``): the task
function's modules, the writer of a task's files (pyarrow's Parquet writer: workers that take
every core write their own) and the compiled kernels, once, for every worker forked from it
(its pages shared by them).

Imported in the fork server only. BLAS and OpenMP are limited to one thread before numpy
loads, so the server starts no helper threads and a fork copies a single-threaded process
(each worker limits its pools again). Like its workers, the server leaves SIGTERM to the
process that started it (it ends when that process does; Python's fork server already
ignores Ctrl-C).
"""

import contextlib
import os
import signal

from retwin.batch.executors import THREAD_ENV, warm_once

for _name in THREAD_ENV:
    os.environ[_name] = "1"
signal.signal(signal.SIGTERM, signal.SIG_IGN)

import retwin.batch.store  # noqa: E402  (the writer of a task's files)
import retwin.batch.tables  # noqa: E402,F401  (the task function's modules)

with contextlib.suppress(Exception):  # a failure is raised again in a worker, by its first task
    warm_once()
