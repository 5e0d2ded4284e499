"""retwin's HTTP service: FastAPI over the twin, with a durable run registry.

``create_app(settings)`` in :mod:`api.main` builds the app; ``retwin serve`` runs it. This
package talks to retwin only through its public API, :mod:`retwin.storage` and
:mod:`retwin.registry`.
"""
