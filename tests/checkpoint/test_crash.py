"""A process that dies in the middle of a checkpoint leaves the previous version intact and no half version.

Real processes and real SQLite: a child stores a version, then dies during the next one, either at a chosen
point (``os._exit`` from inside the write transaction) or at a random one (``SIGKILL`` from the parent).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from migrated.checkpoint import Store, deserialise

CHILD = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from migrated.checkpoint import Store, make_draft, serialise, _writes

    path, where = sys.argv[1], sys.argv[2]
    store = Store(path)
    version = 0

    def put(seed):
        state = {"seed": seed, "array": np.random.default_rng(seed).standard_normal(2 << 20)}  # 16 MiB
        return store.put_draft(make_draft("app", serialise(state), kind="autosave"))

    put(1)
    if where == "chunks":  # die after some of the new version's chunks are written
        real_chunk, count = _writes._insert_chunk, [0]
        def insert_chunk(*args):
            count[0] += 1
            if count[0] == 100:
                os._exit(17)
            return real_chunk(*args)
        _writes._insert_chunk = insert_chunk
    elif where == "version":  # die after the version row is written, before the commit
        real_version = _writes._insert_version
        def insert_version(*args):
            real_version(*args)
            os._exit(17)
        _writes._insert_version = insert_version
    seed = 2
    while True:  # "loop": keep checkpointing until killed
        put(seed)
        seed += 1
    """
)


def run_child(path: Path, where: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), where], stderr=subprocess.PIPE)


def check_consistent(path: Path) -> list[int]:
    """Every version loads whole and matches its seed, no chunk is unreferenced; return the versions."""
    with Store(path) as store:
        assert store.unclean and store.problems == []
        versions = [v.version for v in store.list_versions("app")]
        for number in versions:
            state = deserialise(store.load("app", number).snapshot)
            assert np.array_equal(state["array"], np.random.default_rng(state["seed"]).standard_normal(2 << 20))
        assert store.verify().ok
        assert store.gc().chunks == 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return versions


def versions_stored(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize("where", ["chunks", "version"])
def test_death_inside_the_transaction_leaves_the_previous_version(tmp_path: Path, where: str) -> None:
    path = tmp_path / "checkpoints.db"
    child = run_child(path, where)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 17, err.decode()
    assert path.with_name("checkpoints.db.open").exists()
    assert check_consistent(path) == [1]


def test_kill_9_at_a_random_moment_leaves_whole_versions_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.db"
    child = run_child(path, "loop")
    try:
        deadline = time.monotonic() + 30
        while not versions_stored(path):
            assert child.poll() is None and time.monotonic() < deadline, "the child stored no version"
            time.sleep(0.01)
        time.sleep(np.random.default_rng().uniform(0, 0.5))  # the child writes a version every ~0.1-0.3 s
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    versions = check_consistent(path)
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 1
