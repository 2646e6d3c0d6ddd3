"""Manifests: build one from a snapshot's chunks, and read the chunk lists back out of one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from migrated.checkpoint import _codec
from migrated.checkpoint._chunks import HASH_SIZE, BufferLayout, Chunked, HashMemo, Piece, chunk_hash, chunk_snapshot
from migrated.checkpoint._snapshot import Bytes, Snapshot
from migrated.errors import CheckpointError
from migrated.transport.v1 import checkpoint_pb2 as pb

__all__ = [
    "FORMAT_VERSION",
    "Draft",
    "Kind",
    "buffer_layouts",
    "check_code_path",
    "check_manifest",
    "chunk_hashes",
    "kind_of",
    "make_draft",
    "package_mismatches",
    "proto_kind",
]

FORMAT_VERSION = 1
MAX_CODE_FILES = 10_000
_MAX_PATH = 4096
_MAX_PART = 255


class Kind(StrEnum):
    """Why a version was taken."""

    MANUAL = "manual"
    AUTOSAVE = "autosave"
    CLOSE = "close"
    MOVE = "move"
    RESTORE = "restore"
    CRASH = "crash"
    FORK = "fork"
    IMPORT = "import"


_TO_PROTO = {kind: pb.CheckpointKind.Value(f"CHECKPOINT_KIND_{kind.name}") for kind in Kind}
_FROM_PROTO = {value: kind for kind, value in _TO_PROTO.items()}
_SERIALIZERS = {"pickle": pb.SERIALIZER_PICKLE, "dill": pb.SERIALIZER_DILL}


def proto_kind(kind: Kind | str) -> pb.CheckpointKind.ValueType:
    """The manifest's enum value for ``kind``."""
    return _TO_PROTO[Kind(kind)]


def kind_of(manifest: pb.CheckpointManifest) -> Kind:
    """The kind of a manifest's version."""
    return _FROM_PROTO.get(manifest.kind, Kind.MANUAL)


@dataclass
class Draft:
    """A checkpoint before it is stored: its manifest (version, time and sizes still to be set by the store)
    and the raw pieces of the chunks it references, which may be views of the app's live memory."""

    manifest: pb.CheckpointManifest
    pieces: dict[bytes, Piece]

    def detach(self, hashes: Iterable[bytes] | None = None) -> Draft:
        """A draft that owns copies of the pieces named (all by default) and drops the others, so the app may
        run on. Pass ``store.missing(...)``: an incremental checkpoint then copies only what changed."""
        wanted = self.pieces.keys() if hashes is None else set(hashes) & self.pieces.keys()
        return Draft(self.manifest, {h: Piece(bytes(self.pieces[h].data), self.pieces[h].level) for h in wanted})


def make_draft(
    app: str,
    state: Snapshot | Chunked,
    *,
    kind: Kind | str,
    message: str = "",
    code: Iterable[tuple[str, Bytes]] = (),
    app_module: str = "",
    app_class: str = "",
    console_cursor: int = 0,
    epoch: int = 0,
    parent: int = 0,
    runtime: Mapping[str, str] | None = None,
    packages: Mapping[str, str] | None = None,
    modules: Iterable[str] = (),
    memo: HashMemo | None = None,
) -> Draft:
    """Chunk ``state`` (unless it is chunked already) and describe it, with its code bundle, in a manifest.

    ``code`` is the app's own source files as (path relative to the app's directory, content); ``runtime``
    ``packages`` and ``modules`` come from ``runtime_fingerprint()``, ``package_versions()`` and
    ``imported_modules()`` in the runner, and ``memo`` is its ``HashMemo``.
    """
    chunked = state if isinstance(state, Chunked) else chunk_snapshot(state, memo)
    manifest = pb.CheckpointManifest(
        format_version=FORMAT_VERSION,
        app=app,
        parent=parent,
        kind=proto_kind(kind),
        message=message,
        app_module=app_module,
        app_class=app_class,
        serializer=_SERIALIZERS[chunked.serializer],
        console_cursor=console_cursor,
        epoch=epoch,
    )
    if runtime:
        manifest.runtime.CopyFrom(pb.RuntimeFingerprint(**runtime))
    for name, version in sorted((packages or {}).items()):
        manifest.packages.add(name=name, version=version)
    manifest.modules.extend(modules)
    _add_chunks(manifest, chunked)
    pieces = dict(chunked.pieces)
    _add_code(manifest, pieces, code)
    manifest.total_bytes = chunked.size + sum(file.size for file in manifest.code)
    return Draft(manifest, pieces)


def _add_chunks(manifest: pb.CheckpointManifest, chunked: Chunked) -> None:
    manifest.stream.extend(pb.ChunkRef(hash=digest, size=size) for digest, size in chunked.stream)
    for layout in chunked.buffers:
        buffer = manifest.buffers.add(size=layout.size, readonly=layout.readonly)
        buffer.chunks.extend(pb.ChunkRef(hash=digest, size=size) for digest, size in layout.chunks)


def _add_code(manifest: pb.CheckpointManifest, pieces: dict[bytes, Piece], code: Iterable[tuple[str, Bytes]]) -> None:
    for path, data in sorted(code, key=lambda file: file[0]):
        digest = chunk_hash(data)
        pieces.setdefault(digest, Piece(data, _codec.STREAM_LEVEL))
        manifest.code.add(path=path, hash=digest, size=memoryview(data).nbytes)


def chunk_hashes(manifest: pb.CheckpointManifest) -> list[bytes]:
    """Every chunk a manifest references, once each, in the order it first appears."""
    return list(chunk_sizes(manifest))


def chunk_sizes(manifest: pb.CheckpointManifest) -> dict[bytes, int]:
    """Every chunk a manifest references and its raw size, in the order it first appears."""
    found = {ref.hash: ref.size for ref in manifest.stream}
    for buffer in manifest.buffers:
        found.update((ref.hash, ref.size) for ref in buffer.chunks)
    found.update((file.hash, file.size) for file in manifest.code)
    return found


def buffer_layouts(manifest: pb.CheckpointManifest) -> list[BufferLayout]:
    """The out-of-band buffers of a manifest."""
    return [
        BufferLayout(buffer.size, buffer.readonly, [(ref.hash, ref.size) for ref in buffer.chunks])
        for buffer in manifest.buffers
    ]


def check_manifest(manifest: pb.CheckpointManifest, where: str) -> None:
    """Refuse a manifest this version of migrated cannot read, or one that does not hold together: chunk sizes
    past ``MAX_CHUNK``, buffers whose chunks do not add up, code paths that could leave the app's folder."""
    if manifest.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written in checkpoint format {manifest.format_version}, newer than this migrated reads "
            f"({FORMAT_VERSION}); upgrade migrated"
        )
    refs = [*manifest.stream, *(ref for buffer in manifest.buffers for ref in buffer.chunks)]
    if any(len(ref.hash) != HASH_SIZE or ref.size > _codec.MAX_CHUNK for ref in refs):
        raise CheckpointError(f"{where} is inconsistent: a chunk reference is malformed or too large")
    for buffer in manifest.buffers:
        if sum(ref.size for ref in buffer.chunks) != buffer.size:
            raise CheckpointError(f"{where} is inconsistent: a buffer's chunks do not add up to its size")
    _check_code(manifest, where)


def _check_code(manifest: pb.CheckpointManifest, where: str) -> None:
    if len(manifest.code) > MAX_CODE_FILES:
        raise CheckpointError(f"{where} holds {len(manifest.code)} code files, more than {MAX_CODE_FILES}")
    paths = set()
    for file in manifest.code:
        problem = check_code_path(file.path)
        if problem:
            raise CheckpointError(f"{where} holds a code file with an unusable path ({problem})")
        if len(file.hash) != HASH_SIZE or file.size > _codec.MAX_CHUNK:
            raise CheckpointError(f"{where} holds a code file ({file.path}) that is malformed or too large")
        paths.add(file.path)
    if len(paths) != len(manifest.code):
        raise CheckpointError(f"{where} holds the same code file twice")
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in paths:
                raise CheckpointError(f"{where} holds {parent} both as a code file and as a folder of {path}")
            parent = parent.rpartition("/")[0]


def check_code_path(path: str) -> str:
    """Why ``path`` cannot be a code file of an app ("" when it can): a relative path that stays in its folder."""
    shown = repr(path) if len(path) <= 80 else repr(path[:77]) + "..."
    if not path or len(path.encode(errors="surrogatepass")) > _MAX_PATH:
        return f"{shown} is empty or too long"
    if "\0" in path or path.startswith("/"):
        return f"{shown} is absolute or holds a NUL"
    parts = path.split("/")
    if any(part in ("", ".", "..") or len(part.encode(errors="surrogatepass")) > _MAX_PART for part in parts):
        return f"{shown} has an empty, '.' or '..' part, or a part too long"
    return ""


def package_mismatches(manifest: pb.CheckpointManifest, installed: Mapping[str, str]) -> list[str]:
    """What the app had imported that ``installed`` lacks or has in another version, one phrase each."""
    problems = []
    for package in manifest.packages:
        have = installed.get(package.name)
        if have is None:
            problems.append(f"{package.name} {package.version} is not installed")
        elif have != package.version:
            problems.append(f"{package.name} is {have}, the app used {package.version}")
    return problems
