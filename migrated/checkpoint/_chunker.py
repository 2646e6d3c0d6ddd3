"""Where to cut data into chunks: content-defined cuts for the pickle stream, fixed ones for buffers.

Content-defined chunking (CDC) cuts where the bytes just before the cut match a pattern, so a change only
moves the cuts near it and every other chunk keeps its hash, wherever it now lies in the stream. The usual
rolling hash (gear, Rabin) is a per-byte loop: too slow in Python (~20-70 MB/s with NumPy, ~5 without). This
one is built from operations CPython runs in C over the whole input:

1. ``translate`` maps every byte to a 3-bit symbol through a fixed random table;
2. the symbols, as one big integer, are XORed with themselves shifted by 5, 11 and 17 bytes, three times,
   so each position holds the XOR of the symbols at 8 offsets (0 5 11 16 17 22 28 33): a hash of a 34-byte
   window, uniform on 0..7;
3. ``bytes.find`` looks for runs of zero symbols: a run of 5 has probability 2^-15, of 4, 2^-12.

Cuts are normalised as in FastCDC: no cut before ``MIN``; between ``MIN`` and ``AVG`` only the rare pattern
cuts, after ``AVG`` the commoner one, and ``MAX`` forces a cut. Pickles are low in entropy, so chunks come out
larger than ``AVG`` (~10 KiB on a dict of 1M tuples). Measured on this machine: ~200 MB/s; on a 100k-entry
dict, 1 % of the entries changed in one run costs ~1 % new stored bytes (~50 % with fixed-size chunks, as every
later chunk shifts); against 8 KiB and 16 KiB averages, 1.3 % and 1.7 %, for 40 % and 100 % more chunks.
Changes scattered over the whole stream touch every chunk at any practical size: 1 % of the entries at random
costs ~100 % of the stream at 4, 8 and 16 KiB alike.

Buffers (array memory, big bytes) are cut at fixed offsets (``BUFFER_CHUNK``) from their start: an array keeps
its layout, so fixed chunks of its memory dedup perfectly and cost nothing to find.
"""

from __future__ import annotations

from migrated.checkpoint._snapshot import Bytes

__all__ = ["AVG", "BUFFER_CHUNK", "MAX", "MIN", "content_cuts", "fixed_cuts"]

MIN = 1024
AVG = 4 * 1024
MAX = 64 * 1024
BUFFER_CHUNK = 65_400
"""Not 64 KiB: a chunk stored raw must fit one 64 KiB page of the store with its row (``_schema``)."""

_STRICT = b"\x00" * 5  # 2^-15: the pattern that may cut between MIN and AVG
_LOOSE = b"\x00" * 4  # 2^-12: the pattern that may cut between AVG and MAX
_SHIFTS = (5 * 8, 11 * 8, 17 * 8)
_WINDOW = 34  # bytes that decide one symbol: offsets 0 to 5 + 11 + 17
_BLOCK = 1 << 20  # mix this many bytes at a time, to bound the big integers
_SYMBOLS = bytes.fromhex(
    "010207040407070001040105070105050007000201010505040302030305000701050302020201070400010607060405"
    "030204020606070204020004070505060302040702020300040301020401070404030503030500020307000303040201"
    "010706010303070307050700050007070501060307050606070705020302070107030106060305030202040001000707"
    "030407000604050204060507050707020506050107000704050404000505060104010207010506020404070101020400"
    "030003040004010207040400040705020100040702050000040406040404020300070103060303010402010606020703"
    "04050400020602060605060501050005"
)


def fixed_cuts(size: int, chunk: int = BUFFER_CHUNK) -> list[int]:
    """The ends of fixed-size chunks covering ``size`` bytes."""
    return [*range(chunk, size, chunk), size] if size else []


def content_cuts(data: Bytes) -> list[int]:
    """The ends of content-defined chunks covering ``data``: increasing, the last one ``len(data)``."""
    size = memoryview(data).nbytes
    if size <= MIN:
        return [size] if size else []
    mixed = _mix(data, size)
    cuts: list[int] = []
    start = 0
    while size - start > MIN:
        start = _next_cut(mixed, start, size)
        cuts.append(start)
    if start < size:
        cuts.append(size)
    return cuts


def _next_cut(mixed: bytes, start: int, size: int) -> int:
    """The next cut after ``start``: just past a window whose symbols begin the pattern."""
    found = _find(mixed, _STRICT, start + MIN, min(start + AVG, size))
    if found < 0:
        found = _find(mixed, _LOOSE, start + AVG, min(start + MAX, size))
    return found if found >= 0 else min(start + MAX, size)


def _find(mixed: bytes, pattern: bytes, low: int, high: int) -> int:
    """The first cut in ``[low, high]`` whose window ends a match of ``pattern``; -1 for none.

    The symbol at ``i`` hashes bytes ``i .. i + 33``; a run at ``i .. i + k - 1`` hashes bytes up to
    ``i + k + 32``, so the cut goes at ``i + k + 33``: a cut depends only on the bytes before it.
    """
    reach = len(pattern) + _WINDOW - 1
    index = mixed.find(pattern, max(0, low - reach), max(0, high - _WINDOW + 1))
    return -1 if index < 0 else index + reach


def _mix(data: Bytes, size: int) -> bytes:
    """One 3-bit symbol per byte of ``data``: the XOR of the table symbols at 8 offsets ahead of it."""
    view = memoryview(data).cast("B")
    out = bytearray()
    for start in range(0, size, _BLOCK):
        piece = bytes(view[start : start + _BLOCK + _WINDOW]).translate(_SYMBOLS)
        value = int.from_bytes(piece, "little")
        for shift in _SHIFTS:
            value ^= value >> shift
        out += value.to_bytes(len(piece), "little")[: min(_BLOCK, size - start)]
    return bytes(out)
