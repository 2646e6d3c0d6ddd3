"""Manifests: what a draft records, and reading it back."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from migrated.checkpoint import (
    Kind,
    _fingerprint,
    chunk_hashes,
    code_files,
    make_draft,
    package_mismatches,
    package_versions,
    runtime_fingerprint,
    serialise,
)
from migrated.checkpoint._manifest import FORMAT_VERSION, check_manifest, kind_of
from migrated.errors import CheckpointError
from migrated.transport.v1 import checkpoint_pb2 as pb


def test_a_draft_describes_state_code_and_where_it_was_taken() -> None:
    state = {"array": np.arange(100_000, dtype=np.float64), "text": "x" * 100}
    draft = make_draft(
        "sim",
        serialise(state),
        kind="autosave",
        message="hello",
        code=[("sim.py", b"print('sim')\n"), ("lib/util.py", b"X = 1\n")],
        app_module="sim",
        app_class="Sim",
        console_cursor=42,
        epoch=3,
        runtime=runtime_fingerprint(),
        packages={"numpy": np.__version__},
    )
    m = draft.manifest
    assert (m.format_version, m.app, m.message, m.console_cursor, m.epoch) == (FORMAT_VERSION, "sim", "hello", 42, 3)
    assert kind_of(m) is Kind.AUTOSAVE and m.serializer == pb.SERIALIZER_PICKLE
    assert (m.app_module, m.app_class, m.runtime.python_version) == ("sim", "Sim", sys.version.split()[0])
    assert [(f.path, f.size) for f in m.code] == [("lib/util.py", 6), ("sim.py", 13)]
    assert [b.size for b in m.buffers] == [800_000] and sum(r.size for r in m.buffers[0].chunks) == 800_000
    assert m.total_bytes == sum(r.size for r in m.stream) + 800_000 + 19
    assert set(chunk_hashes(m)) == set(draft.pieces)
    assert m.version == 0 and m.bytes_added == 0  # the store sets them


def test_every_kind_maps_to_the_manifest_and_back() -> None:
    for kind in Kind:
        assert kind_of(make_draft("a", serialise(1), kind=kind).manifest) is kind


def test_a_newer_format_is_refused() -> None:
    manifest = make_draft("a", serialise(1), kind="manual").manifest
    manifest.format_version = FORMAT_VERSION + 1
    with pytest.raises(CheckpointError, match="newer than this migrated reads"):
        check_manifest(manifest, "version 3 of 'a'")


def test_package_mismatches_name_what_is_missing_or_different() -> None:
    manifest = make_draft("a", serialise(1), kind="manual", packages={"numpy": "2.4.6", "zstandard": "0.25.0"}).manifest
    assert package_mismatches(manifest, {"numpy": "2.4.6", "zstandard": "0.25.0"}) == []
    assert package_mismatches(manifest, {"numpy": "1.26.0"}) == [
        "numpy is 1.26.0, the app used 2.4.6",
        "zstandard 0.25.0 is not installed",
    ]


def test_package_versions_lists_imported_third_party_distributions() -> None:
    found = package_versions()
    assert found["numpy"] == np.__version__
    assert "migrated" not in found and "json" not in found


def test_code_files_are_the_app_file_and_its_local_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.py").write_text("import ck_helper\n")
    (tmp_path / "ck_helper.py").write_text("X = 1\n")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "ck_dep.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / ".venv" / "lib"))
    try:
        importlib.import_module("ck_helper")
        importlib.import_module("ck_dep")
        assert code_files(tmp_path / "app.py") == [("app.py", b"import ck_helper\n"), ("ck_helper.py", b"X = 1\n")]
    finally:
        sys.modules.pop("ck_helper", None)
        sys.modules.pop("ck_dep", None)


def test_code_files_leave_out_migrated_itself_even_as_main() -> None:
    """A runner is ``python -m migrated.runtime._runner``, so its ``__main__`` is migrated's own file; an app whose
    folder holds migrated (a clone in /tmp and an app in /tmp) must not take it into its code bundle."""
    runner = Path(_fingerprint.__file__).resolve().parents[1] / "runtime" / "_runner.py"
    root = runner.parents[2]  # the folder that holds the migrated package
    assert _fingerprint._own_source(str(runner), root) is None
    assert _fingerprint._own_source(str(root / "app.py"), root) == root / "app.py"
