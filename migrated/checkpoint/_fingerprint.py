"""What a checkpoint records about where it was taken: the runtime, the third-party packages the app had
imported, and the app's own source files (its code bundle). These read the running interpreter and the disk,
so they are called in the runner, apart from the pure core."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

__all__ = ["code_files", "imported_modules", "package_versions", "runtime_fingerprint"]

_OWN = "migrated"
_INSTALLED = frozenset({"site-packages", "dist-packages", ".venv", "venv", "__pypackages__"})


def runtime_fingerprint() -> dict[str, str]:
    """The interpreter: implementation, version, platform, machine, byte order."""
    return {
        "implementation": sys.implementation.name,
        "python_version": platform.python_version(),
        "platform": sys.platform,
        "machine": platform.machine(),
        "byteorder": sys.byteorder,
    }


def package_versions(modules: Mapping[str, ModuleType] | None = None) -> dict[str, str]:
    """Distribution name to version, for every third-party distribution with an imported top-level module."""
    loaded = sys.modules if modules is None else modules
    top = {name.partition(".")[0] for name in loaded}
    found: dict[str, str] = {}
    for name in sorted(top - set(sys.stdlib_module_names) - {_OWN}):
        for dist in _distributions().get(name, ()):
            if dist != _OWN:  # the `client` package is ours too
                found.setdefault(dist, _version(dist))
    return {name: version for name, version in found.items() if version}


def imported_modules(modules: Mapping[str, ModuleType] | None = None) -> list[str]:
    """The top-level modules of third-party distributions the app has imported (a thaw may import them ahead)."""
    loaded = sys.modules if modules is None else modules
    top = {name.partition(".")[0] for name in loaded}
    installed = _distributions()
    return sorted(
        name for name in top - set(sys.stdlib_module_names) - {_OWN} if _OWN not in installed.get(name, [_OWN])
    )


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache  # the version of a loaded module cannot change under it
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def code_files(app_file: str | Path, modules: Mapping[str, ModuleType] | None = None) -> list[tuple[str, bytes]]:
    """The app's own source: its file and every loaded module under its directory, except installed packages
    and migrated itself; as (path relative to that directory, content)."""
    main = Path(app_file).resolve()
    root = main.parent
    paths = {main}
    for name, module in list((sys.modules if modules is None else modules).items()):
        path = _source_of(name, module, root)
        if path is not None:
            paths.add(path)
    return [(path.relative_to(root).as_posix(), path.read_bytes()) for path in sorted(paths)]


def _source_of(name: str, module: ModuleType, root: Path) -> Path | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or name.partition(".")[0] == _OWN or not file.endswith(".py"):
        return None
    path = _own_source(file, root)
    return path if path is not None and path.is_file() else None


@functools.lru_cache(maxsize=4096)  # resolving every loaded module's path took ~15 ms per checkpoint with numpy
def _own_source(file: str, root: Path) -> Path | None:
    """``file`` resolved, if it lies under ``root`` outside installed packages."""
    path = Path(file).resolve()
    if not path.is_relative_to(root) or _INSTALLED & set(path.relative_to(root).parts):
        return None
    if any(path.is_relative_to(own) for own in _own_packages()):  # the runner itself is ``__main__``
        return None
    return path


@functools.cache
def _own_packages() -> tuple[Path, ...]:
    """The folders of migrated's packages, ``migrated`` and ``client`` beside it, wherever they are installed."""
    package = Path(__file__).resolve().parents[1]
    return (package, package.parent / "client")
