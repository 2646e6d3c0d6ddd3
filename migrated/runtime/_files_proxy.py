"""The functions that stand in for ``open``, ``os``'s primitives, ``Path.touch`` and ``shutil.rmtree`` while an
app's files resolve at its home: each call goes home (a ``_fileops`` call) or, for a local root or a file
descriptor, to the real function.
"""

from __future__ import annotations

import builtins
import errno
import io
import os

from migrated.runtime import _fileops
from migrated.runtime._files_dirs import Entries, HomeDirEntry
from migrated.runtime._files_raw import HomeRaw, Mode, wrap

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every runner start
    from collections.abc import Callable
    from typing import Any

    from migrated.runtime._home import Home

__all__ = ["OS_NAMES", "Proxy", "absolute", "keep_opener", "real_open"]

OS_NAMES = (
    "stat",
    "lstat",
    "listdir",
    "scandir",
    "mkdir",
    "rmdir",
    "remove",
    "unlink",
    "rename",
    "replace",
    "access",
    "utime",
    "truncate",
    "readlink",
    "getcwd",
    "getcwdb",
    "chdir",
    "chmod",
)
"""The ``os`` functions the proxy stands in for."""

real_open = builtins.open
_real_getcwd = os.getcwd


def keep_opener(path: str, flags: int) -> int:
    """An opener that never truncates and never insists on a new file (a checkpoint reopens)."""
    return os.open(path, flags & ~(os.O_TRUNC | os.O_EXCL), 0o666)


def absolute(path: str) -> str:
    """``path`` made absolute against this process's real working directory."""
    return os.path.normpath(os.path.join(_real_getcwd(), os.fsdecode(path)))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


class Proxy:
    """The functions that stand in for ``open`` and ``os``'s while files resolve at home."""

    def __init__(self, home: Home, local_roots: list[str]) -> None:
        self.home = home
        self.cwd = os.path.normpath(home.cwd)
        self.home_cwd = self.cwd
        self.roots = [absolute(root) for root in local_roots if root and absolute(root) != os.sep]
        self.real: dict[str, Any] = {name: getattr(os, name) for name in OS_NAMES}
        self._saved: list[tuple[object, str, object]] = []

    # -- patching

    def patch(self) -> None:
        import pathlib  # both are there in almost any app; only an app away from home pays for them here
        import shutil

        opener = self.open
        self._set(builtins, "open", opener)
        self._set(io, "open", opener)
        for name in OS_NAMES:
            self._set(os, name, getattr(self, "os_" + name))
        if hasattr(os, "listxattr"):
            self.real["listxattr"] = os.listxattr
            self._set(os, "listxattr", self.os_listxattr)
        proxy = self

        def touch(path: Any, mode: int = 0o666, exist_ok: bool = True) -> None:
            proxy.touch(path, mode, exist_ok)

        self.real["touch"] = pathlib.Path.touch
        self._set(pathlib.Path, "touch", touch)
        self.real["rmtree"] = shutil.rmtree
        self._set(shutil, "rmtree", self._rmtree)

    def unpatch(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _set(self, owner: object, name: str, value: object) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    # -- where a path resolves

    def route(self, path: Any) -> tuple[str | None, Any]:
        """``(path at home, None)`` for a path that resolves at home, ``(None, path for the real call)`` for one
        that stays on this host."""
        if isinstance(path, int):
            return None, path
        given = os.fspath(path)
        text = os.fsdecode(given)
        if "\0" in text:
            raise ValueError("embedded null byte")
        full = os.path.join(self.cwd, text)
        if not self._local(os.path.normpath(full)):
            return full, None
        if os.path.isabs(text):
            return None, given
        return None, os.fsencode(full) if isinstance(given, bytes) else full

    def _local(self, path: str) -> bool:
        """Whether ``path`` stays here: the longest root that holds it is a local root, not the cwd at home."""
        local = max((len(root) for root in self.roots if _under(path, root)), default=-1)
        home = max((len(cwd) for cwd in (self.cwd, self.home_cwd) if _under(path, cwd)), default=-1)
        return local >= 0 and local >= home

    def call(self, request: _fileops.PathCall, *names: Any) -> dict[str, Any]:
        """A call at home; its error names the paths as the app gave them."""
        try:
            header, _ = self.home.call(request.op, request.args())
        except OSError as exc:
            if names:
                exc.filename = names[0]
            if len(names) > 1:
                exc.filename2 = names[1]
            raise
        return header

    # -- open

    def open(
        self,
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        closefd: bool = True,
        opener: Callable[[str, int], int] | None = None,
        *,
        keep: bool = False,
    ) -> Any:
        """``open``, at home for a path that resolves there (``keep``: reopen, never truncate)."""
        at_home, local = (None, file) if opener is not None or not closefd else self.route(file)
        if at_home is None:
            real_opener = keep_opener if keep and opener is None and not isinstance(local, int) else opener
            return real_open(local, mode, buffering, encoding, errors, newline, closefd, real_opener)
        parsed = Mode(mode)
        if not parsed.text and buffering == 1:
            import warnings

            warnings.warn(
                "line buffering (buffering=1) isn't supported in binary mode, the default buffer size will be used",
                RuntimeWarning,
                stacklevel=2,
            )
        name = os.fspath(file)
        answer = self.call(_fileops.Open(at_home, parsed.flags(keep), 0o666), name)
        raw = HomeRaw(self.home, answer, name, parsed)
        try:
            return wrap(raw, parsed, buffering, encoding, errors, newline)
        except BaseException:
            raw.close()
            raise

    # -- os

    def os_stat(self, path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            result: os.stat_result = self.real["stat"](local, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
            return result
        header = self.call(_fileops.Stat(at_home, follow_symlinks), os.fspath(path))
        return _fileops.stat_result(header["stat"])

    def os_lstat(self, path: Any, *, dir_fd: int | None = None) -> os.stat_result:
        return self.os_stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def os_listdir(self, path: Any = None) -> list[Any]:
        path = "." if path is None else path
        at_home, local = self.route(path)
        if at_home is None:
            names: list[Any] = self.real["listdir"](local)
            return names
        header = self.call(_fileops.Listdir(at_home), os.fspath(path))
        if isinstance(os.fspath(path), bytes):
            return [os.fsencode(name) for name in header["names"]]
        return list(header["names"])

    def os_scandir(self, path: Any = None) -> Any:
        path = "." if path is None else path
        at_home, local = self.route(path)
        if at_home is None:
            return self.real["scandir"](local)
        given = os.fspath(path)
        header = self.call(_fileops.Scandir(at_home), given)
        entries = []
        for name, lstat, target in header["entries"]:
            shown = os.fsencode(name) if isinstance(given, bytes) else name
            stats = (_fileops.stat_result(lstat), _fileops.stat_result(target) if target is not None else None)
            entries.append(HomeDirEntry(shown, os.path.join(given, shown), *stats))
        return Entries(entries)

    def os_mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            self.real["mkdir"](local, mode, dir_fd=dir_fd)
        else:
            self.call(_fileops.Mkdir(at_home, mode), os.fspath(path))

    def os_rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._path_call("rmdir", _fileops.Rmdir, path, dir_fd)

    def os_remove(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._path_call("remove", _fileops.Unlink, path, dir_fd)

    def os_unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        self._path_call("unlink", _fileops.Unlink, path, dir_fd)

    def _path_call(
        self, name: str, request: type[_fileops.Rmdir | _fileops.Unlink], path: Any, dir_fd: int | None
    ) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            self.real[name](local, dir_fd=dir_fd)
        else:
            self.call(request(at_home), os.fspath(path))

    def os_rename(self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        self._move("rename", _fileops.Rename, src, dst, src_dir_fd, dst_dir_fd)

    def os_replace(self, src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        self._move("replace", _fileops.Replace, src, dst, src_dir_fd, dst_dir_fd)

    def _move(
        self,
        name: str,
        request: type[_fileops.Rename | _fileops.Replace],
        src: Any,
        dst: Any,
        src_dir_fd: int | None,
        dst_dir_fd: int | None,
    ) -> None:
        if src_dir_fd is not None or dst_dir_fd is not None:
            (src_home, src_local), (dst_home, dst_local) = (None, src), (None, dst)
        else:
            (src_home, src_local), (dst_home, dst_local) = self.route(src), self.route(dst)
        if src_home is None and dst_home is None:
            self.real[name](src_local, dst_local, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        elif src_home is None or dst_home is None:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fspath(src), None, os.fspath(dst))
        else:
            self.call(request(src_home, dst_home), os.fspath(src), os.fspath(dst))

    def os_access(
        self,
        path: Any,
        mode: int,
        *,
        dir_fd: int | None = None,
        effective_ids: bool = False,
        follow_symlinks: bool = True,
    ) -> bool:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            ok: bool = self.real["access"](
                local, mode, dir_fd=dir_fd, effective_ids=effective_ids, follow_symlinks=follow_symlinks
            )
            return ok
        request = _fileops.Access(at_home, mode, follow_symlinks, effective_ids)
        return bool(self.call(request, os.fspath(path))["ok"])

    def os_utime(
        self,
        path: Any,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        dir_fd: int | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            kwargs: dict[str, Any] = {} if ns is None else {"ns": ns}
            self.real["utime"](local, times, dir_fd=dir_fd, follow_symlinks=follow_symlinks, **kwargs)
            return
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None and (not isinstance(times, tuple) or len(times) != 2):
            raise TypeError("utime: 'times' must be either a tuple of two ints or None")
        if ns is not None and (not isinstance(ns, tuple) or len(ns) != 2):
            raise TypeError("utime: 'ns' must be a tuple of two ints")
        self.call(_fileops.Utime(at_home, follow_symlinks, times, ns), os.fspath(path))

    def os_truncate(self, path: Any, length: int) -> None:
        at_home, local = self.route(path)
        if at_home is None:
            self.real["truncate"](local, length)
        else:
            self.call(_fileops.TruncatePath(at_home, length), os.fspath(path))

    def os_readlink(self, path: Any, *, dir_fd: int | None = None) -> Any:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            return self.real["readlink"](local, dir_fd=dir_fd)
        given = os.fspath(path)
        target = str(self.call(_fileops.Readlink(at_home), given)["target"])
        return os.fsencode(target) if isinstance(given, bytes) else target

    def os_getcwd(self) -> str:
        return self.cwd

    def os_getcwdb(self) -> bytes:
        return os.fsencode(self.cwd)

    def os_chdir(self, path: Any) -> None:
        at_home, local = self.route(path)
        if at_home is None:
            self.real["chdir"](local)
            return
        self.cwd = os.path.normpath(str(self.call(_fileops.Chdir(at_home), os.fspath(path))["cwd"]))

    def os_chmod(self, path: Any, mode: int, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> None:
        at_home, local = (None, path) if dir_fd is not None else self.route(path)
        if at_home is None:
            self.real["chmod"](local, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        else:
            self.call(_fileops.Chmod(at_home, mode, follow_symlinks), os.fspath(path))

    def os_listxattr(self, path: Any = None, *, follow_symlinks: bool = True) -> list[str]:
        """Extended attributes are not carried: at home, a file system without them (``shutil`` copes)."""
        at_home, local = self.route("." if path is None else path)
        if at_home is None:
            names: list[str] = self.real["listxattr"](local, follow_symlinks=follow_symlinks)
            return names
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), os.fspath("." if path is None else path))

    # -- what does not go through the primitives

    def touch(self, target: Any, mode: int = 0o666, exist_ok: bool = True) -> None:
        """``Path.touch``, which opens with ``os.open``."""
        if self.route(target)[0] is None:
            self.real["touch"](target, mode, exist_ok)
            return
        if exist_ok:
            try:
                self.os_utime(target)
            except FileNotFoundError:
                pass
            else:
                return
        self.open(target, "ab" if exist_ok else "xb").close()

    def _rmtree(
        self,
        path: Any,
        ignore_errors: bool = False,
        onerror: Any = None,
        *,
        onexc: Any = None,
        dir_fd: int | None = None,
    ) -> None:
        """``shutil.rmtree``, which works with descriptors: at home, a path-based walk of its own. Takes the
        3.11 ``onerror`` and the 3.12 ``onexc`` alike."""
        if dir_fd is not None or self.route(path)[0] is None:
            more = {"onexc": onexc} if onexc is not None else {}
            self.real["rmtree"](path, ignore_errors, onerror, dir_fd=dir_fd, **more)
            return
        if ignore_errors:
            failed: Any = _ignore
        elif onexc is not None:
            failed = onexc
        elif onerror is not None:
            failed = lambda function, where, exc: onerror(function, where, (type(exc), exc, exc.__traceback__))  # noqa: E731
        else:
            failed = _reraise
        if os.path.islink(path):
            failed(os.path.islink, path, OSError("Cannot call rmtree on a symbolic link"))
            return
        _remove_tree(path, failed)


def _remove_tree(path: Any, failed: Any) -> None:
    """Remove ``path`` and what it holds through the (patched) ``os`` calls; ``failed(function, path, exc)``."""
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        failed(os.scandir, path, exc)
        entries = []
    for entry in entries:
        try:
            folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            folder = False
        if folder:
            _remove_tree(entry.path, failed)
            continue
        try:
            os.unlink(entry.path)
        except OSError as exc:
            failed(os.unlink, entry.path, exc)
    try:
        os.rmdir(path)
    except OSError as exc:
        failed(os.rmdir, path, exc)


def _ignore(*args: object) -> None:
    pass


def _reraise(function: object, path: object, exc: BaseException) -> None:
    raise exc  # shutil's own default: raise the error
