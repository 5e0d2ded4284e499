"""``uvicorn --factory api.main:create_app`` from a checkout of the repository, as before the
service moved: the app of :mod:`retwin_service.main` (the entry installed with retwin is
``retwin_service.main:create_app``)."""

from retwin_service.main import create_app

__all__ = ["create_app"]
