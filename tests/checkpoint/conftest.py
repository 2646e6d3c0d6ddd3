"""Fixtures for the checkpoint core: a store in a temporary directory, and state round trips."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from migrated.checkpoint import Snapshot, Store, deserialise, make_draft, serialise
from migrated.checkpoint._assemble import assemble
from migrated.checkpoint._codec import encode


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "checkpoints.db") as opened:
        yield opened


def through_chunks(snapshot: Snapshot) -> Snapshot:
    """What a store would give back: chunked, hashed, compressed, checked and reassembled (no SQLite)."""
    draft = make_draft("test", snapshot, kind="manual")
    stored = [(digest, encode(piece.data, piece.level)) for digest, piece in draft.pieces.items()]
    return assemble(draft.manifest, stored).snapshot()


def round_trip(value: Any) -> Any:
    """``value`` serialised, stored as chunks and brought back."""
    return deserialise(through_chunks(serialise(value)))


def same(a: Any, b: Any) -> bool:
    """Deep equality that also compares NumPy arrays (values, dtype, shape) and NaN-free floats."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, functools.partial) and isinstance(b, functools.partial):
        return a.func is b.func and same(a.args, b.args) and same(a.keywords, b.keywords)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)
