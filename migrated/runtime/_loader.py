"""Load an app's source file and find the App class to run."""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from types import ModuleType

from migrated.errors import AmbiguousAppError, AppCodeError, AppFileError, NotAnAppError
from migrated.runtime._app import App

__all__ = ["find_app_class", "load_app_class", "module_name_for"]

CONTRACT_HINT = (
    "an app is a class derived from migrated.App with start() and step() methods "
    "(see examples/counter.py in the migrated sources)"
)


def module_name_for(path: str | os.PathLike[str]) -> str:
    """The module name an app file is imported under: its stem, unless that shadows a loaded module."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = stem if stem.isidentifier() else "app"
    return stem if stem not in sys.modules else f"_mig_app_{stem}"


def load_app_class(file: str | os.PathLike[str], app_class: str = "") -> type[App]:
    """Import ``file`` as a module and return the App subclass to run."""
    path = os.fspath(file)
    if not os.path.isfile(path):
        raise AppFileError(f"{file} is not a file; give the path of an app's .py file")
    module = _import_file(path)
    return find_app_class(module, path, app_class)


def _import_file(path: str) -> ModuleType:
    name = module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppFileError(f"{path} cannot be imported as Python; give the path of an app's .py file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(path))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        code = f": {exc.text.strip()}" if exc.text else ""
        raise AppCodeError(f"{path} has a syntax error at {where} ({exc.msg}){code}; fix it and run again") from None
    except Exception as exc:
        del sys.modules[name]
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise AppCodeError(
            f"importing {path} failed at {os.path.basename(frame.filename)} line {frame.lineno} with "
            f"{type(exc).__name__}: {exc}; fix the app's code and run again"
        ) from None
    return module


def find_app_class(module: ModuleType, path: str | os.PathLike[str], app_class: str = "") -> type[App]:
    """Pick the App subclass named ``app_class``, or the only one the module defines."""
    if app_class:
        cls = getattr(module, app_class, None)
        if not (isinstance(cls, type) and issubclass(cls, App)):
            raise NotAnAppError(f"{path} has no App subclass named {app_class!r}; {CONTRACT_HINT}")
        return cls
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, App) and value.__module__ == module.__name__
    ]
    if not found:
        raise NotAnAppError(f"{path} defines no migrated.App subclass; {CONTRACT_HINT}")
    if len(found) > 1:
        names = ", ".join(sorted(cls.__name__ for cls in found))
        raise AmbiguousAppError(
            f"{path} defines {len(found)} App classes ({names}); choose one with {os.path.basename(path)}:ClassName"
        )
    return found[0]
