"""A checkout's shortcut to the service: the service itself is the package
:mod:`retwin_service` (``src/retwin_service``), installed with retwin (not this folder)."""
