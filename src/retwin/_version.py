"""The version of retwin, in a module that imports nothing, so that any layer can read it
without importing the top package (which loads the engine and the public API)."""

__version__ = "0.1.0"
