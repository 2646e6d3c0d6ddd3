"""The export file: one version with its chunks and code, in one portable file, checked on import.

Layout: the 16-byte magic ``MIGRATED EXPORT\\n`` and a 4-byte format version, then records, each a 1-byte tag,
an 8-byte length and a body: ``M`` the manifest (protobuf), ``C`` a chunk (32-byte hash, 1-byte codec, 8-byte
raw size, stored bytes), from format 2 an optional ``S``, the exporting host's signature (4-byte length and its
certificate in PEM, then its signature over the BLAKE3 of every byte before the ``S`` record), and last ``E``,
the BLAKE3 of every byte before it. Integers are little-endian. Every length is checked before anything is
allocated; what the signature proves (which host, and whether it is trusted) is the caller's to decide.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from blake3 import blake3
from google.protobuf.message import DecodeError

from migrated.checkpoint._assemble import Damage, check_chunk
from migrated.checkpoint._chunks import HASH_SIZE
from migrated.checkpoint._codec import MAX_CHUNK, WIRE_CODECS, Codec, StoredChunk
from migrated.checkpoint._manifest import check_manifest, chunk_hashes
from migrated.errors import CheckpointError, ExportFileError
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = ["FORMAT", "MAGIC", "Export", "Sign", "Signature", "read_export", "write_export"]

MAGIC = b"MIGRATED EXPORT\n"
FORMAT = 2
_HEADER = struct.Struct("<BQ")
_CHUNK = struct.Struct(f"<{HASH_SIZE}sBQ")
_CERT = struct.Struct("<I")
_MAX_RECORD = {ord("M"): 256 << 20, ord("C"): _CHUNK.size + MAX_CHUNK + (1 << 20), ord("S"): 64 << 10, ord("E"): 64}

Sign = Callable[[bytes], tuple[bytes, bytes]]
"""Given the digest to sign, the exporting host's certificate (PEM) and its signature of the digest."""


@dataclass(frozen=True, slots=True)
class Signature:
    """An export's signature as found: who claims to sign (a certificate), the signature, and what it signs."""

    cert_pem: bytes
    signature: bytes
    digest: bytes  # the BLAKE3 of every byte before the S record


@dataclass(frozen=True, slots=True)
class Export:
    """An export read and checked whole: its manifest, its chunks as stored, and its signature if it has one."""

    manifest: pb.CheckpointManifest
    chunks: dict[bytes, StoredChunk]
    signature: Signature | None


class _Writer:
    """Writes records and hashes everything written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = blake3()
        self.size = 0

    def write(self, *parts: bytes | memoryview) -> None:
        for part in parts:
            self.out.write(part)
            self.hash.update(part)
            self.size += memoryview(part).nbytes

    def record(self, tag: bytes, *body: bytes | memoryview) -> None:
        self.write(_HEADER.pack(tag[0], sum(memoryview(part).nbytes for part in body)), *body)


def write_export(
    out: BinaryIO,
    manifest: pb.CheckpointManifest,
    chunks: Iterable[tuple[bytes, StoredChunk]],
    sign: Sign | None = None,
) -> int:
    """Write ``manifest`` and every chunk it references to ``out``, signed by ``sign`` if given; return the
    bytes written."""
    writer = _Writer(out)
    writer.write(MAGIC, struct.pack("<I", FORMAT))
    writer.record(b"M", manifest.SerializeToString())
    wanted = set(chunk_hashes(manifest))
    for digest, stored in chunks:
        if digest in wanted:
            wanted.discard(digest)
            writer.record(b"C", _CHUNK.pack(digest, int(stored.codec), stored.raw_size), memoryview(stored.data))
    if wanted:
        raise CheckpointError(f"the version lost {len(wanted)} chunks while it was exported; export it again")
    if sign is not None:
        cert, signature = sign(writer.hash.digest())
        writer.record(b"S", _CERT.pack(len(cert)), cert, signature)
    digest = writer.hash.digest()
    out.write(_HEADER.pack(ord("E"), len(digest)) + digest)
    return writer.size + _HEADER.size + len(digest)


class _Reader:
    """Reads records and hashes everything read before the end record."""

    def __init__(self, src: BinaryIO, name: str) -> None:
        self.src = src
        self.name = name
        self.hash = blake3()

    def read(self, size: int) -> bytes:
        data = self.src.read(size)
        if len(data) != size:
            raise ExportFileError(f"{self.name} is truncated; export the version again")
        self.hash.update(data)
        return data

    def record(self) -> tuple[bytes, bytes]:
        before = self.hash.copy()
        tag, size = _HEADER.unpack(self.read(_HEADER.size))
        if size > _MAX_RECORD.get(tag, 0):
            raise ExportFileError(f"{self.name} is damaged (a record of {size} bytes); export the version again")
        if tag == ord("E"):
            self.hash = before
        return bytes([tag]), self.src.read(size) if tag == ord("E") else self.read(size)


def read_export(src: BinaryIO, name: str = "the file") -> Export:
    """An export's manifest, chunks and signature, every chunk and the whole file checked; ``ExportFileError``
    for anything else."""
    reader = _Reader(src, name)
    _check_header(reader)
    manifest = _manifest(reader, *reader.record())
    chunks: dict[bytes, StoredChunk] = {}
    signature: Signature | None = None
    while True:
        signed = reader.hash.digest()
        tag, body = reader.record()
        if tag == b"E":
            break
        if tag == b"S" and signature is None:
            signature = _signature(name, body, signed)
        elif tag == b"C" and signature is None:
            digest, stored = _chunk(name, body)
            chunks[digest] = stored
        else:
            raise ExportFileError(f"{name} is damaged (a {tag!r} record out of place); export the version again")
    _check_end(reader, body, src)
    _check_complete(name, manifest, chunks)
    return Export(manifest, chunks, signature)


def _signature(name: str, body: bytes, signed: bytes) -> Signature:
    if len(body) < _CERT.size:
        raise ExportFileError(f"{name} is damaged (its signature record is too short); export the version again")
    (length,) = _CERT.unpack_from(body)
    if _CERT.size + length > len(body):
        raise ExportFileError(f"{name} is damaged (its signature record is malformed); export the version again")
    return Signature(body[_CERT.size : _CERT.size + length], body[_CERT.size + length :], signed)


def _check_header(reader: _Reader) -> None:
    head = reader.src.read(len(MAGIC) + 4)
    reader.hash.update(head)
    if head[: len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + 4:
        raise ExportFileError(f"{reader.name} is not a migrated export; make one with mig export")
    (version,) = struct.unpack("<I", head[len(MAGIC) :])
    if version > FORMAT:
        raise ExportFileError(
            f"{reader.name} is in export format {version}, newer than this migrated reads; upgrade it"
        )


def _manifest(reader: _Reader, tag: bytes, body: bytes) -> pb.CheckpointManifest:
    if tag != b"M":
        raise ExportFileError(f"{reader.name} is damaged (no manifest first); export the version again")
    try:
        manifest = pb.CheckpointManifest.FromString(body)
    except DecodeError:
        raise ExportFileError(f"{reader.name} is damaged (its manifest cannot be read); export it again") from None
    try:
        check_manifest(manifest, reader.name)
    except CheckpointError as exc:
        raise ExportFileError(f"{exc.message}; it was not imported") from None
    return manifest


def _chunk(name: str, body: bytes) -> tuple[bytes, StoredChunk]:
    if len(body) < _CHUNK.size:
        raise ExportFileError(f"{name} is damaged (a chunk record is too short); export the version again")
    digest, codec, raw_size = _CHUNK.unpack_from(body)
    if codec not in WIRE_CODECS:
        raise ExportFileError(f"{name} is damaged (a chunk has codec {codec}); export the version again")
    try:
        stored = StoredChunk(Codec(codec), raw_size, body[_CHUNK.size :])
        check_chunk(digest, stored)
    except (ValueError, Damage) as exc:
        raise ExportFileError(f"{name} is damaged ({exc}); export the version again") from None
    return digest, stored


def _check_end(reader: _Reader, body: bytes, src: BinaryIO) -> None:
    if body != reader.hash.digest():
        raise ExportFileError(f"{reader.name} is damaged (its checksum does not match); export the version again")
    if src.read(1):
        raise ExportFileError(f"{reader.name} has data after its end; export the version again")


def _check_complete(name: str, manifest: pb.CheckpointManifest, chunks: dict[bytes, StoredChunk]) -> None:
    missing = [digest for digest in chunk_hashes(manifest) if digest not in chunks]
    if missing:
        raise ExportFileError(f"{name} is incomplete ({len(missing)} chunks missing); export the version again")
