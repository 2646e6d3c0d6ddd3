"""The in-app side of migrated: the App contract and the runner that drives it."""

from migrated.runtime._app import App

__all__ = ["App"]
