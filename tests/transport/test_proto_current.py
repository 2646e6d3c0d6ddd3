"""The committed gRPC stubs are what scripts/gen_proto.py generates from the .proto sources."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.helpers import REPO

COMMITTED = REPO / "migrated" / "transport" / "v1"


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    written = gen_proto.generate(tmp_path / "v1")
    generated = {path.name: path.read_bytes() for path in written}
    committed = {path.name: path.read_bytes() for path in COMMITTED.iterdir() if path.is_file()}
    assert sorted(generated) == sorted(committed)
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run python scripts/gen_proto.py"
