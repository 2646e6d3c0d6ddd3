"""Export one version to a portable file; import it elsewhere, checked whole, or refuse it."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from migrated.checkpoint import Store, deserialise, make_draft, serialise
from migrated.errors import AppExistsError, ExportFileError

CODE = [("sim.py", b"import migrated\n"), ("lib/physics.py", b"G = 9.81\n")]


@pytest.fixture
def exported(store: Store) -> bytes:
    table = {i: str(i) for i in range(20_000)}
    state = {"array": np.random.default_rng(3).standard_normal(300_000), "table": table}
    store.put_draft(make_draft("sim", serialise(state), kind="manual", message="first"))
    table[5] = "five"
    store.put_draft(make_draft("sim", serialise(state), kind="autosave", code=CODE, epoch=4))
    out = io.BytesIO()
    size = store.export("sim", out, version=2)
    assert size == len(out.getvalue())
    return out.getvalue()


def test_export_and_import_into_another_store(exported: bytes, tmp_path: Path) -> None:
    with Store(tmp_path / "elsewhere.db") as other:
        info = other.import_(io.BytesIO(exported))
        assert (info.app, info.version, info.parent, info.kind) == ("sim", 1, 0, "import")
        loaded = other.load("sim")
        state = deserialise(loaded.snapshot)
        assert state["table"][5] == "five" and state["array"].shape == (300_000,)
        assert loaded.code == dict(CODE)
        assert (loaded.manifest.origin_app, loaded.manifest.origin_version, loaded.manifest.epoch) == ("sim", 2, 4)
        assert other.verify().ok


def test_import_refuses_an_existing_name_and_takes_a_new_one(store: Store, exported: bytes) -> None:
    with pytest.raises(AppExistsError, match="an app named 'sim' has checkpoints already"):
        store.import_(io.BytesIO(exported))
    info = store.import_(io.BytesIO(exported), name="sim-copy")
    assert info.app == "sim-copy" and info.bytes_added == 0  # every chunk was there already


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "is truncated"),
        (lambda data: data[:-1], "is damaged (its checksum does not match)"),
        (lambda data: data + b"more", "has data after its end"),
        (lambda data: b"PK\x03\x04" + data[4:], "is not a migrated export; make one with mig export"),
        (lambda data: b"", "is not a migrated export"),
        (lambda data: flip(data, len(data) // 2), "is damaged"),
        (lambda data: flip(data, 40), "is damaged"),
        (lambda data: flip(data, len(data) - 10), "is damaged (its checksum does not match)"),
    ],
)
def test_a_damaged_file_is_refused_and_stores_nothing(
    exported: bytes, tmp_path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    with Store(tmp_path / "elsewhere.db") as other:
        with pytest.raises(ExportFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            other.import_(io.BytesIO(damage(exported)), source="sim.mig")
        assert other.apps() == [] and other.gc().chunks == 0


def flip(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)
