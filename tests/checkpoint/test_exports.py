"""The package's public names, and what importing it costs a runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import migrated.checkpoint as checkpoint


def test_every_exported_name_resolves() -> None:
    for name in checkpoint.__all__:
        assert getattr(checkpoint, name) is not None, name
    assert sorted(dir(checkpoint)) == sorted(checkpoint.__all__)


def test_capture_and_restore_do_not_import_the_store_dill_or_numpy() -> None:
    code = (
        "import sys, migrated.checkpoint as c; c.capture, c.restore, c.deserialise; c.serialise({'x': lambda: 1});"
        "print(' '.join(m for m in ('sqlite_utils', 'dill', 'numpy', 'grpc', 'sqlite3') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_a_read_only_store_does_not_import_sqlite_utils(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    checkpoint.Store(path).close()
    code = (
        f"import sys, migrated.checkpoint as c; c.Store({str(path)!r}, readonly=True).close();"
        "print('sqlite_utils' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"
