"""Checkpoints: serialise an app's state, cut it into content-addressed chunks, keep immutable versions in
SQLite. No network, no processes: the daemon and the runner compose these pieces.

In a runner (pause the app only for ``capture``; the rest may run while it goes on if the snapshot is
detached)::

    snapshot = capture(app, "sim")
    draft = make_draft("sim", snapshot, kind="autosave", code=code_files(app_file), app_module=..., app_class=...)

In the daemon (from a worker thread, never the event loop)::

    info = store.put_version(draft.manifest, draft.pieces)     # or put_draft(draft)
    loaded = store.load("sim", 41)                            # CheckpointDamagedError: try an earlier one
    app = restore(loaded.snapshot)                            # in the runner, then app.on_restore()

Names resolve lazily, so ``import migrated.checkpoint`` stays cheap for a runner that only restores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrated.checkpoint._archive import Export, Signature, read_export
    from migrated.checkpoint._assemble import Assembled, code_bundle
    from migrated.checkpoint._chunks import BufferLayout, Chunked, HashMemo, Piece, chunk_hash, chunk_snapshot
    from migrated.checkpoint._codec import WIRE_CODECS, Codec, StoredChunk
    from migrated.checkpoint._fingerprint import code_files, imported_modules, package_versions, runtime_fingerprint
    from migrated.checkpoint._manifest import (
        Draft,
        Kind,
        check_code_path,
        check_manifest,
        chunk_hashes,
        chunk_sizes,
        make_draft,
        package_mismatches,
    )
    from migrated.checkpoint._retention import RetentionPolicy, parse_policy, thin
    from migrated.checkpoint._rows import VersionInfo
    from migrated.checkpoint._serialise import capture, deserialise, restore, serialise
    from migrated.checkpoint._snapshot import OutOfBand, Segment, Snapshot
    from migrated.checkpoint._store import Damaged, Loaded, Store, VerifyReport
    from migrated.checkpoint._writer import immediate
    from migrated.checkpoint._writes import GcReport

__all__ = [
    "WIRE_CODECS",
    "Assembled",
    "BufferLayout",
    "Chunked",
    "Codec",
    "Damaged",
    "Draft",
    "Export",
    "GcReport",
    "HashMemo",
    "Kind",
    "Loaded",
    "OutOfBand",
    "Piece",
    "RetentionPolicy",
    "Segment",
    "Signature",
    "Snapshot",
    "Store",
    "StoredChunk",
    "VerifyReport",
    "VersionInfo",
    "capture",
    "check_code_path",
    "check_manifest",
    "chunk_hash",
    "chunk_hashes",
    "chunk_sizes",
    "chunk_snapshot",
    "code_bundle",
    "code_files",
    "deserialise",
    "immediate",
    "imported_modules",
    "make_draft",
    "package_mismatches",
    "package_versions",
    "parse_policy",
    "read_export",
    "restore",
    "runtime_fingerprint",
    "serialise",
    "thin",
]

_HOME = {
    "Export": "_archive",
    "Signature": "_archive",
    "read_export": "_archive",
    "Assembled": "_assemble",
    "code_bundle": "_assemble",
    "BufferLayout": "_chunks",
    "Chunked": "_chunks",
    "HashMemo": "_chunks",
    "Piece": "_chunks",
    "chunk_hash": "_chunks",
    "chunk_snapshot": "_chunks",
    "Codec": "_codec",
    "WIRE_CODECS": "_codec",
    "StoredChunk": "_codec",
    "code_files": "_fingerprint",
    "imported_modules": "_fingerprint",
    "package_versions": "_fingerprint",
    "runtime_fingerprint": "_fingerprint",
    "Draft": "_manifest",
    "Kind": "_manifest",
    "check_code_path": "_manifest",
    "check_manifest": "_manifest",
    "chunk_hashes": "_manifest",
    "chunk_sizes": "_manifest",
    "make_draft": "_manifest",
    "package_mismatches": "_manifest",
    "RetentionPolicy": "_retention",
    "parse_policy": "_retention",
    "thin": "_retention",
    "VersionInfo": "_rows",
    "capture": "_serialise",
    "deserialise": "_serialise",
    "restore": "_serialise",
    "serialise": "_serialise",
    "OutOfBand": "_snapshot",
    "Segment": "_snapshot",
    "Snapshot": "_snapshot",
    "Damaged": "_store",
    "Loaded": "_store",
    "Store": "_store",
    "VerifyReport": "_store",
    "GcReport": "_writes",
    "immediate": "_writer",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
