"""The app's files at its home: while an app runs away from home, ``open``, ``pathlib`` and the common ``os`` and
``os.path`` calls act on the home host's file system.

``install`` puts proxies in place of ``builtins.open``/``io.open`` and of the ``os`` primitives that
``os.path``, ``pathlib``, ``glob``, ``os.walk`` and ``shutil`` look up at call time; ``uninstall`` puts the
originals back. Relative paths resolve against the app's working directory at home (``os.chdir`` moves it
there, ``os.getcwd`` tells it). Paths under the local roots (the Python installation, the app's code on this
host, temporary files, ``/proc``...) and file descriptors stay on this host.

The pieces: ``_files_proxy`` (the stand-ins, and where a path resolves), ``_files_raw`` (a file open at home:
``HomeRaw``, with read-ahead and write-behind, under the usual buffered and text wrappers), ``_files_dirs``
(``os.scandir``'s entries), ``_fileops`` (the calls to the home, which ``migrated.daemon.home._files`` carries
out). This module is their API.

This module is imported by the runner only when an app runs away from home, and by a checkpoint that holds an
open file (``reopen``): it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import sys

from migrated.runtime._files_dirs import HomeDirEntry
from migrated.runtime._files_proxy import Proxy, absolute, keep_opener, real_open
from migrated.runtime._files_raw import BUFFER_SIZE, ClosedRaw, HomeRaw, Mode, wrap

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from collections.abc import Iterator
    from typing import Any

    from migrated.runtime._home import Home

__all__ = [
    "BUFFER_SIZE",
    "HomeDirEntry",
    "HomeRaw",
    "closed_file",
    "default_local_roots",
    "install",
    "installed",
    "reopen",
    "suspended",
    "uninstall",
]

_proxy: Proxy | None = None


def installed() -> bool:
    """Whether files resolve at home now."""
    return _proxy is not None


def install(home: Home, local_roots: list[str]) -> None:
    """Make files resolve at ``home`` (``home.cwd``: the app's working directory there), except under
    ``local_roots`` and for file descriptors."""
    global _proxy
    uninstall()
    proxy = Proxy(home, local_roots)
    proxy.patch()
    _proxy = proxy


def uninstall() -> None:
    """Put the real ``open`` and ``os`` functions back (files opened at home stay usable while the line is)."""
    global _proxy
    if _proxy is not None:
        _proxy.unpatch()
        _proxy = None


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """The real ``open`` and ``os`` functions for a while (code of the runner that must act on this host)."""
    proxy = _proxy
    if proxy is None:
        yield
        return
    proxy.unpatch()
    try:
        yield
    finally:
        proxy.patch()


def default_local_roots(code_dir: str) -> list[str]:
    """What stays on this host: the Python installation, the app's code here, the migrated package, temporary
    files, and the kernel's ``/proc``, ``/sys`` and ``/dev``."""
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.__file__)]
    site = sys.modules.get("site")
    if site is not None:
        roots += [*site.getsitepackages(), site.getusersitepackages()]
    roots += [code_dir, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    roots += [os.environ.get(name, "") for name in ("TMPDIR", "TEMP", "TMP")]
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        roots.append(tempfile.gettempdir())
    roots += ["/tmp", "/var/tmp", "/proc", "/sys", "/dev"]
    found: list[str] = []
    for root in roots:
        if not root:
            continue
        for path in (absolute(root), os.path.realpath(root) if _proxy is None else absolute(root)):
            if path not in found and path != os.sep:
                found.append(path)
    return found


def reopen(
    path: str | bytes,
    mode: str,
    position: int,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    buffering: int = -1,
) -> Any:
    """Open ``path`` again for a checkpoint that held it open: at home when files resolve there, without
    truncating or requiring it to be new, and at ``position`` (for a text file, a cookie its ``tell`` gave)."""
    if _proxy is not None:
        file = _proxy.open(path, mode, buffering, encoding, errors, newline, keep=True)
    else:
        file = real_open(path, mode, buffering, encoding, errors, newline, opener=keep_opener)
    try:
        file.seek(position)
    except BaseException:
        file.close()
        raise
    return file


def closed_file(name: Any, mode: str, text: bool) -> Any:
    """A closed file of the same kind, name and mode (a checkpoint held it closed, or it could not be reopened)."""
    try:
        parsed = Mode(mode.replace("t", "").replace("b", "") + ("" if text else "b"))
    except ValueError:
        parsed = Mode("r" if text else "rb")
    file = wrap(ClosedRaw(name, parsed), parsed, -1, None, None, None)
    file.close()
    return file
