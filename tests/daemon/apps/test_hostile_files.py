"""Files from elsewhere are hostile until checked: an export that names a path, holds odd code paths, declares
a decompression bomb or carries a forged signature is refused in one sentence, and leaves nothing behind; a
damaged manifest is found by verify and skipped by open. Each test reproduces a finding of the hardening issue."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil  # type: ignore[import-untyped]
import pytest
import zstandard

from migrated.checkpoint import StoredChunk, read_export
from migrated.checkpoint._archive import write_export
from migrated.checkpoint._codec import Codec
from migrated.transport.v1 import checkpoint_pb2 as pb
from tests.conftest import AppDir, Daemon, Daemons
from tests.helpers import one_sentence, pair, peer_channel, wait_until

COUNTER = """
import migrated

class Counter(migrated.App):
    def start(self):
        self.n = 0

    def on_input(self, line):
        self.n += 1
        print(f"n={self.n}", flush=True)
"""


@pytest.fixture(scope="module")
def exported(module_daemons: Daemons, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export of a small app (signed by the daemon that made it)."""
    daemon = module_daemons.start()
    apps = AppDir(tmp_path_factory.mktemp("apps"))
    daemon.mig("run", str(apps.write("counter.py", COUNTER)), "--name", "counter")
    daemon.mig("send", "counter", "x")
    daemon.wait_logs("counter", "n=1")
    daemon.mig("close", "counter")
    path = apps.path / "counter.mig"
    daemon.mig("export", "counter", "-o", str(path))
    return path


def rewrite(
    export: Path,
    out: Path,
    manifest_change: Callable[[pb.CheckpointManifest], None] = lambda _: None,
    chunks: dict[bytes, StoredChunk] | None = None,
) -> Path:
    """A copy of ``export`` with its manifest changed (and its chunks replaced), whole and unsigned."""
    with open(export, "rb") as src:
        original = read_export(src)
    manifest = pb.CheckpointManifest()
    manifest.CopyFrom(original.manifest)
    manifest_change(manifest)
    with open(out, "wb") as dst:
        write_export(dst, manifest, (chunks if chunks is not None else original.chunks).items())
    return out


def names_in_store(daemon: Daemon) -> list[str]:
    with sqlite3.connect(daemon.dir / "checkpoints.sqlite") as conn:
        return [row[0] for row in conn.execute("SELECT name FROM apps")]


def left_in_code_dir(daemon: Daemon) -> list[str]:
    code = daemon.dir / "code"
    return sorted(path.name for path in code.iterdir()) if code.is_dir() else []


@pytest.mark.parametrize("name", ["/tmp/migvictim/dir", "../../migvictim", "a\0b", "", "x" * 65])
def test_an_export_that_names_a_path_is_refused_and_deletes_nothing(
    daemon: Daemon, exported: Path, tmp_path: Path, name: str
) -> None:
    victim = Path("/tmp/migvictim/dir")
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "precious").write_text("keep me")
    hostile = rewrite(exported, tmp_path / "hostile.mig", lambda m: setattr(m, "app", name))
    result = daemon.mig("import", str(hostile), check=2)
    assert "not a valid app name" in one_sentence(result.err) and "--name" in result.err
    assert (victim / "precious").read_text() == "keep me"
    assert daemon.ps() == {} and names_in_store(daemon) == [] and left_in_code_dir(daemon) == []
    daemon.mig("import", str(hostile), "--name", "safe")  # the same file under a name of the user's
    assert daemon.app("safe")["state"] == "closed"


@pytest.mark.parametrize(
    ("paths", "why"),
    [
        (["../evil.py"], "'..'"),
        (["/etc/evil.py"], "absolute"),
        (["lib", "lib/x.py"], "both as a code file and as a folder"),
        (["."], "'.'"),
        ([""], "empty"),
        (["a\0.py"], "NUL"),
        (["a.py", "a.py"], "the same code file twice"),
    ],
)
def test_an_export_with_odd_code_paths_is_one_sentence_and_leaves_no_orphan(
    daemon: Daemon, exported: Path, tmp_path: Path, app_dir: AppDir, paths: list[str], why: str
) -> None:
    def odd_code(manifest: pb.CheckpointManifest) -> None:
        first = manifest.code[0]
        del manifest.code[:]
        for path in paths:
            manifest.code.add(path=path, hash=first.hash, size=first.size)

    hostile = rewrite(exported, tmp_path / "odd.mig", odd_code)
    result = daemon.mig("import", str(hostile), "--name", "odd", check=9)
    assert why in one_sentence(result.err), result.err
    # Nothing half imported: the name is free for every command.
    assert daemon.ps() == {} and names_in_store(daemon) == [] and left_in_code_dir(daemon) == []
    daemon.mig("import", str(exported), "--name", "odd")
    daemon.mig("rm", "odd")
    daemon.mig("run", str(app_dir.write("odd.py", COUNTER)), "--name", "odd")


def test_an_import_whose_name_is_taken_by_checkpoints_leaves_them_untouched(daemon: Daemon, exported: Path) -> None:
    daemon.mig("import", str(exported), "--name", "first")
    result = daemon.mig("import", str(exported), "--name", "first", check=4)
    assert "exists already" in one_sentence(result.err)
    assert [row["version"] for row in daemon.history("first")] == [1]


def bomb(declared: int, actual: int) -> StoredChunk:
    """A chunk of ``actual`` zero bytes compressed by zstd (a few KB), recorded as ``declared`` raw bytes."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, size=actual, closefd=False) as writer:
        block = bytes(1 << 20)
        for _ in range(actual >> 20):
            writer.write(block)
    return StoredChunk(Codec.ZSTD, declared, out.getvalue())


@pytest.mark.parametrize(("declared", "actual"), [(768 << 20, 768 << 20), (1 << 40, 768 << 20), (1 << 20, 768 << 20)])
def test_a_decompression_bomb_is_refused_before_the_daemon_allocates_it(
    daemon: Daemon, exported: Path, tmp_path: Path, declared: int, actual: int
) -> None:
    with open(exported, "rb") as src:
        original = read_export(src)
    target = original.manifest.stream[0].hash
    chunks = {**original.chunks, target: bomb(declared, actual)}
    hostile = rewrite(exported, tmp_path / "bomb.mig", chunks=chunks)
    assert hostile.stat().st_size < 200_000
    before = psutil.Process(daemon.pid).memory_info().rss
    result = daemon.mig("import", str(hostile), "--name", "bomb", check=9)
    sentence = one_sentence(result.err)
    assert "is damaged" in sentence and "MemoryError" not in sentence, sentence
    assert psutil.Process(daemon.pid).memory_info().rss - before < 64 << 20
    assert daemon.alive() and names_in_store(daemon) == []


def test_a_manifest_that_declares_more_than_memory_is_refused_at_open(
    daemon: Daemon, exported: Path, tmp_path: Path
) -> None:
    with open(exported, "rb") as src:
        original = read_export(src)
    size, count = 64 << 10, 1 << 20  # one stored chunk of zeros, referenced a million times: 64 GiB of state

    def big(manifest: pb.CheckpointManifest) -> None:
        buffer = manifest.buffers.add(size=size * count, readonly=False)
        buffer.chunks.extend([pb.ChunkRef(hash=zero_hash(size), size=size)] * count)

    zero = {zero_hash(size): StoredChunk(Codec.ZSTD, size, zstandard.ZstdCompressor().compress(bytes(size)))}
    hostile = rewrite(exported, tmp_path / "big.mig", big, chunks={**original.chunks, **zero})
    daemon.mig("import", str(hostile), "--name", "big", timeout=120)
    result = daemon.mig("open", "big", check=None)
    assert result.code != 0 and "memory" in one_sentence(result.err), result
    assert daemon.alive()


def zero_hash(size: int) -> bytes:
    from migrated.checkpoint import chunk_hash

    return chunk_hash(bytes(size))


def flip_a_manifest_byte(daemon: Daemon, app: str, version: int) -> None:
    """Flip one byte of a stored manifest, as a failing disk would."""
    with sqlite3.connect(daemon.dir / "checkpoints.sqlite") as conn:
        version_id, data = conn.execute(
            "SELECT v.id, v.manifest FROM versions v JOIN apps a ON a.id = v.app_id WHERE a.name = ? AND v.version = ?",
            (app, version),
        ).fetchone()
        flipped = bytearray(data)
        flipped[len(flipped) // 3] ^= 0x20
        conn.execute("DROP TRIGGER versions_are_immutable")
        conn.execute("UPDATE versions SET manifest = ? WHERE id = ?", (bytes(flipped), version_id))


def test_a_flipped_manifest_byte_is_found_by_verify_and_open_falls_back(daemon: Daemon, app_dir: AppDir) -> None:
    daemon.mig("run", str(app_dir.write("notes.py", COUNTER)), "--name", "notes")
    daemon.mig("send", "notes", "x")
    daemon.wait_logs("notes", "n=1")
    daemon.mig("checkpoint", "notes")  # version 1: n=1
    daemon.mig("send", "notes", "x")
    daemon.wait_logs("notes", "n=2")
    daemon.mig("close", "notes")  # version 2: n=2
    flip_a_manifest_byte(daemon, "notes", 2)
    _, out, err = daemon.mig("verify", check=9)
    assert "notes version 2" in out and "manifest" in out and "notes version 1" not in out + err
    daemon.mig("open", "notes")
    daemon.wait_state("notes", "running")
    assert "version 2 of 'notes' is damaged" in daemon.logs("notes")  # the fallback is said
    daemon.mig("send", "notes", "x")
    daemon.wait_logs("notes", "n=2\n")  # version 1's state went on


def test_a_daemon_signs_its_exports_and_an_import_says_who_signed(daemons: Daemons, exported: Path) -> None:
    laptop = daemons.start("--name", "laptop")
    box = daemons.start("--name", "box")
    # The module's daemon signed `exported`: a host that is not paired with it.
    result = laptop.mig("import", str(exported), "--name", "stranger")
    assert "signed by" not in result.out
    assert "not paired" in result.err and "runs the code" in result.err, result.err
    unsigned = rewrite(exported, exported.with_name("unsigned.mig"))
    result = laptop.mig("import", str(unsigned), "--name", "nobody")
    assert "not signed by any host" in result.err and "runs the code" in result.err, result.err
    # Its own export, and one from a paired host, are trusted.
    mine = exported.with_name("mine.mig")
    laptop.mig("export", "nobody", "-o", str(mine))
    result = laptop.mig("import", str(mine), "--name", "mine")
    assert "signed by laptop" in result.out and result.err == ""
    pair(box, laptop)
    result = box.mig("import", str(mine), "--name", "from-laptop")
    assert "signed by laptop" in result.out and result.err == ""
    # A signature that does not match the file refuses it.
    forged = forge(mine, exported.with_name("forged.mig"))
    result = box.mig("import", str(forged), "--name", "forged", check=9)
    assert "signature" in one_sentence(result.err) and "forged" not in box.ps()


def forge(signed: Path, out: Path) -> Path:
    """``signed`` with one chunk changed and its checksum made whole again, the signature kept."""
    with open(signed, "rb") as src:
        export = read_export(src)
    assert export.signature is not None
    manifest = pb.CheckpointManifest()
    manifest.CopyFrom(export.manifest)
    manifest.message = "changed after signing"
    signature = export.signature
    with open(out, "wb") as dst:
        write_export(dst, manifest, export.chunks.items(), lambda _: (signature.cert_pem, signature.signature))
    return out


def test_an_old_store_gets_manifest_hashes_and_verifies_clean(daemons: Daemons, app_dir: AppDir) -> None:
    daemon = daemons.start()
    daemon.mig("run", str(app_dir.write("old.py", COUNTER)), "--name", "old")
    daemon.mig("close", "old")
    daemon.mig("shutdown")
    wait_until(lambda: not daemon.alive(), 20, what="the daemon to stop")
    with sqlite3.connect(daemon.dir / "checkpoints.sqlite") as conn:  # as migrated before manifest hashes
        conn.execute("DROP TRIGGER versions_are_immutable")
        conn.execute("UPDATE versions SET manifest_hash = NULL")
        conn.execute("ALTER TABLE versions DROP COLUMN manifest_hash")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_manifest_hash'")
        conn.execute(
            "CREATE TRIGGER versions_are_immutable BEFORE UPDATE ON versions "
            "BEGIN SELECT RAISE(ABORT, 'checkpoint versions are immutable'); END"
        )
    again = daemons.start(state_dir=daemon.dir)
    assert again.mig("verify").out.endswith("0 damaged\n")
    again.mig("open", "old")
    again.wait_state("old", "running")


def test_a_paired_peer_that_stages_a_bomb_is_refused_and_the_daemon_stays_small(
    daemons: Daemons, exported: Path
) -> None:
    from migrated.transport._identity import load_identity
    from migrated.transport.v1 import peer_pb2, peer_pb2_grpc

    alpha, beta = daemons.start("--name", "alpha"), daemons.start("--name", "beta")
    pair(alpha, beta)
    with open(exported, "rb") as src:
        original = read_export(src)
    manifest = original.manifest
    target = manifest.stream[0].hash
    evil = bomb(768 << 20, 768 << 20)
    ref = peer_pb2.MigrationRef(id="ab" * 16, app="bombed", epoch=1)
    chunks = [
        peer_pb2.ChunkData(hash=digest, codec=int(chunk.codec), raw_size=chunk.raw_size, data=bytes(chunk.data))
        for digest, chunk in {**original.chunks, target: evil}.items()
    ]
    before = psutil.Process(alpha.pid).memory_info().rss
    identity = load_identity(beta.dir / "identity", "beta")
    with peer_channel(alpha, identity.key_pem, identity.client_cert_pem) as ch:
        stub = peer_pb2_grpc.PeerStub(ch)
        requests = iter([peer_pb2.StageRequest(migration=ref, manifest=manifest), peer_pb2.StageRequest(chunks=chunks)])
        with pytest.raises(grpc.RpcError) as refused:
            stub.Stage(requests, timeout=60)
    assert "declares" in (refused.value.details() or ""), refused.value.details()
    assert psutil.Process(alpha.pid).memory_info().rss - before < 64 << 20
    assert alpha.alive() and "bombed" not in alpha.ps()
