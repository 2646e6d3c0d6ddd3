"""App code bundles on disk: ``DIR/code/NAME`` holds the source of an app that came from a file or a peer.

A bundle is written whole or not at all: into a fresh folder beside the others, renamed into place. Its paths
were checked with the manifest (relative, no ``..``), and each one is checked again against the folder here.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from migrated.errors import AppFileError

__all__ = ["discard", "place", "unpack"]


def unpack(code_dir: Path, code: Mapping[str, bytes]) -> Path:
    """Write ``code`` (relative path to content) into a new folder under ``code_dir``; return it."""
    folder = code_dir / f".unpack-{uuid.uuid4().hex}"
    folder.mkdir(mode=0o700, parents=True)
    try:
        for relative, content in code.items():
            _write(folder, relative, content)
    except BaseException:
        discard(folder)
        raise
    return folder


def _write(folder: Path, relative: str, content: bytes) -> None:
    target = (folder / relative).resolve()
    root = folder.resolve()
    if not target.is_relative_to(root) or target == root:
        raise AppFileError(f"the code bundle holds a file outside its folder ({relative!r}); it was refused")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:
        out.write(content)


def place(folder: Path, code_dir: Path, name: str) -> Path:
    """Make an unpacked ``folder`` the code of app ``name`` (a checked name), replacing what was there."""
    target = code_dir / name
    old = code_dir / f".old-{uuid.uuid4().hex}"
    if os.path.lexists(target):
        os.replace(target, old)
    os.replace(folder, target)
    discard(old)
    return target


def discard(folder: Path) -> None:
    """Remove a folder this module wrote (nothing when it is not there)."""
    shutil.rmtree(folder, ignore_errors=True)
