"""retwin's what-if service: FastAPI over the twin, with a durable run registry.

A package of its own, installed with the ``api`` extra (``pip install 'retwin[api]'``);
retwin itself never imports it (``retwin serve`` and ``retwin token`` reach it by name, at
the moment they run). It talks to retwin only through retwin's public modules: what-ifs
through :mod:`retwin.whatif`, worker processes through :mod:`retwin.batch.executors`.

``create_app(settings)`` in :mod:`retwin_service.main` builds the app (``uvicorn --factory
retwin_service.main:create_app``). Requests go routes → :mod:`~retwin_service.service`
(check, resolve the what-if once) → :mod:`~retwin_service.registry` (the run row, committed)
→ :mod:`~retwin_service.jobs` (one computation per key, on an executor; in a worker
:func:`retwin.whatif.run`, then the stored result) → :mod:`~retwin_service.tables` (the
stored result, read back).
"""
