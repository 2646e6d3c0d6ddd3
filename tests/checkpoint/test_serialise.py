"""The serialiser: a corpus of what apps hold, shared references, views, the fast path and its errors."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import functools
import io
import json
import os
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import migrated
from migrated.checkpoint import capture, deserialise, restore, serialise
from migrated.errors import UnserialisableStateError
from migrated.runtime._loader import load_app_class

from .conftest import round_trip, same, through_chunks


@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: list[str] = dataclasses.field(default_factory=list)


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


class Flags(enum.IntFlag):
    A = 1
    B = 2


CORPUS: dict[str, Any] = {
    "none": None,
    "ints": [0, -1, 2**70, True],
    "floats": [0.0, -1.5, float("inf"), 1e-300],
    "complex": 1 + 2j,
    "text": "naïve 🙂 text",
    "bytes": b"\x00\x01 bytes",
    "bytearray": bytearray(b"mutable"),
    "big bytes": bytes(range(256)) * 1000,
    "big str": "é" * 100_000,
    "big bytearray": bytearray(b"z" * 200_000),
    "tuple": (1, (2, (3,))),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "dict": {"a": 1, 2: "b", (3, 4): [5]},
    "nested": {"list": [{"deep": [1, 2, {"deeper": (3, 4)}]}]},
    "dataclass": Point(1.0, 2.0, ["a"]),
    "enum": [Colour.RED, Flags.A | Flags.B],
    "datetime": [dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC), dt.date(2024, 1, 1), dt.timedelta(hours=3)],
    "decimal": decimal.Decimal("3.14159265358979323846"),
    "fraction": fractions.Fraction(22, 7),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "path": Path("/tmp/some/where"),
    "counter": collections.Counter("hello"),
    "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
    "deque": collections.deque([1, 2, 3], maxlen=5),
    "range": range(3, 30, 3),
    "partial": functools.partial(int, base=2),
    "int array": np.arange(10, dtype=np.int32),
    "float array": np.linspace(0, 1, 100_000),
    "fortran": np.asfortranarray(np.arange(200_000, dtype=np.float32).reshape(400, 500)),
    "structured": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "i4"), ("b", "f8")]),
    "object array": np.array([1, "two", None], dtype=object),
    "zero-d": np.array(7.5),
    "empty": np.zeros((0, 3)),
    "numpy scalar": np.float64(2.5),
    "big-endian": np.arange(100_000, dtype=">i8"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_round_trips_through_chunks(name: str) -> None:
    value = CORPUS[name]
    restored = round_trip(value)
    assert same(restored, value)


def test_plain_state_uses_the_c_pickler() -> None:
    assert serialise(CORPUS).serializer == "pickle"


def test_lambdas_closures_and_nested_functions_stay_on_the_fast_path() -> None:
    counter = _make_counter(5)
    state = {"square": lambda x: x * x, "counter": counter, "factorial": _make_factorial(), "default": _defaults()}
    snapshot = serialise(state)
    assert snapshot.serializer == "pickle"
    restored = deserialise(through_chunks(snapshot))
    assert restored["square"](7) == 49
    assert [restored["counter"](), restored["counter"]()] == [6, 7]
    assert restored["factorial"](6) == 720
    assert restored["default"]() == (1, "k")
    assert restored["square"].__qualname__ == state["square"].__qualname__


def test_modules_code_and_mapping_proxies_stay_on_the_fast_path() -> None:
    state: dict[str, Any] = {
        "np": np,
        "json": json,
        "path": os.path,
        "code": _make_counter.__code__,
        "proxy": types.MappingProxyType({"a": 1}),
        "array": np.arange(100_000, dtype=np.float64),
    }
    snapshot = serialise(state)
    assert snapshot.serializer == "pickle"
    restored = deserialise(through_chunks(snapshot))
    assert restored["np"] is np and restored["json"] is json and restored["path"] is os.path
    assert restored["code"] == _make_counter.__code__
    assert restored["proxy"] == {"a": 1} and isinstance(restored["proxy"], types.MappingProxyType)
    assert np.array_equal(restored["array"], state["array"])


def test_closures_sharing_a_cell_still_share_it() -> None:
    get, put = _make_box()
    restored_get, restored_put = round_trip((get, put))
    restored_put(41)
    assert restored_get() == 41
    assert get() == 0


def test_defaultdict_with_a_lambda_factory() -> None:
    counts: collections.defaultdict[str, int] = collections.defaultdict(lambda: 0)
    counts["a"] += 2
    restored = round_trip(counts)
    restored["b"] += 1
    assert dict(restored) == {"a": 2, "b": 1}


def test_a_class_defined_in_a_function_goes_through_dill() -> None:
    class Local:
        def __init__(self) -> None:
            self.value = 3

        def double(self) -> int:
            return self.value * 2

    snapshot = serialise([Local()])
    assert snapshot.serializer == "dill"
    assert deserialise(through_chunks(snapshot))[0].double() == 6


def test_a_dill_stream_still_keeps_buffers_out_of_band() -> None:
    class Local:
        pass

    array = np.arange(100_000, dtype=np.float64)
    snapshot = serialise({"local": Local(), "array": array})
    assert snapshot.serializer == "dill"
    assert [len(buffer.data) for buffer in snapshot.buffers] == [array.nbytes]
    assert np.array_equal(deserialise(through_chunks(snapshot))["array"], array)


def test_classes_of_the_app_module_restore_by_reference(tmp_path: Path) -> None:
    source = tmp_path / "shapes_app.py"
    source.write_text(
        "import migrated\n"
        "class Shape:\n"
        "    def __init__(self, sides):\n"
        "        self.sides = sides\n"
        "    def describe(self):\n"
        "        return f'{self.sides} sides'\n"
        "class Shapes(migrated.App):\n"
        "    def start(self):\n"
        "        self.shapes = [Shape(3), Shape(4)]\n"
        "        self.pick = lambda s: s.sides > 3\n"
    )
    cls = load_app_class(str(source))
    try:
        app = cls()
        app.start()
        snapshot = capture(app, "shapes")
        assert snapshot.serializer == "pickle"
        restored = restore(through_chunks(snapshot))
        assert type(restored) is cls
        assert [s.describe() for s in restored.shapes] == ["3 sides", "4 sides"]  # type: ignore[attr-defined]
        assert [restored.pick(s) for s in restored.shapes] == [False, True]  # type: ignore[attr-defined]
    finally:
        sys.modules.pop(cls.__module__, None)


def test_shared_references_and_cycles_survive() -> None:
    shared = [1, 2, 3]
    cyclic: list[Any] = ["head"]
    cyclic.append(cyclic)
    node: dict[str, Any] = {"name": "a"}
    node["self"] = node
    restored = round_trip({"x": shared, "y": shared, "z": (shared, shared), "cyclic": cyclic, "node": node})
    assert restored["x"] is restored["y"] is restored["z"][0] is restored["z"][1]
    assert restored["cyclic"][1] is restored["cyclic"]
    assert restored["node"]["self"] is restored["node"]


def test_array_views_stay_views_of_one_buffer() -> None:
    base = np.arange(1_000_000, dtype=np.float64)
    state = {
        "base": base,
        "slice": base[10:20],
        "reversed": base[::-1],
        "strided": base[::7],
        "grid": base.reshape(1000, 1000).T,
    }
    snapshot = serialise(state)
    assert [len(b.data) for b in snapshot.buffers] == [base.nbytes]
    restored = deserialise(through_chunks(snapshot))
    for key in state:
        assert same(restored[key], state[key]), key
        assert np.shares_memory(restored[key], restored["base"]), key
    restored["base"][15] = -1
    assert restored["slice"][5] == -1
    again = deserialise(through_chunks(serialise(restored)))
    assert np.shares_memory(again["slice"], again["base"]) and again["slice"][5] == -1


def test_a_view_alone_keeps_its_base_and_read_only_stays_read_only() -> None:
    base = np.arange(100_000, dtype=np.int64)
    view = base[5:10]
    frozen = np.arange(100_000.0)
    frozen.flags.writeable = False
    restored_view, restored_frozen = round_trip((view, frozen))
    assert list(restored_view) == [5, 6, 7, 8, 9]
    assert restored_view.flags.writeable and not restored_frozen.flags.writeable


def test_restored_arrays_do_not_copy_their_buffers() -> None:
    array = np.arange(1_000_000, dtype=np.float64)
    snapshot = through_chunks(serialise(array))
    restored = deserialise(snapshot)
    assert np.shares_memory(restored, np.frombuffer(snapshot.buffers[0].data, dtype=np.uint8))


def test_memoryviews_round_trip() -> None:
    data = bytearray(range(256)) * 400
    view = memoryview(data).cast("I")
    restored = round_trip({"view": view, "small": memoryview(b"abc")})
    assert restored["view"].format == "I" and restored["view"].tolist() == view.tolist()
    assert bytes(restored["small"]) == b"abc"


def test_large_values_are_kept_apart_from_the_inline_stream() -> None:
    snapshot = serialise({"payload": b"x" * 300_000, "array": np.zeros(100_000), "small": b"y" * 100})
    aligned = [segment for segment in snapshot.stream if segment.aligned]
    assert [len(segment.data) for segment in aligned] == [300_000]
    assert [len(b.data) for b in snapshot.buffers] == [800_000]
    assert b"\x95" not in bytes(snapshot.stream[0].data)[2:3]  # no frame header after PROTO


def test_detach_copies_live_memory() -> None:
    array = np.zeros(100_000)
    snapshot = serialise(array).detach()
    array[:] = 1
    assert not deserialise(through_chunks(snapshot)).any()


class Chat(migrated.App):
    transient = ("db",)

    def start(self) -> None:
        self.n = 1
        self.db = sqlite3.connect(":memory:")
        self.me = self
        self.rooms = [{"owner": self, "log": ["hi"]}]


def test_capture_leaves_out_transient_and_keeps_the_app_itself() -> None:
    app = Chat()
    app.start()
    restored = restore(through_chunks(capture(app, "chat")))
    assert isinstance(restored, Chat) and restored is not app
    assert restored.n == 1 and not hasattr(restored, "db")
    assert restored.me is restored and restored.rooms[0]["owner"] is restored


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: sqlite3.connect(":memory:"), "self.extra is a sqlite3.Connection; list it in transient and reopen it"),
        (
            lambda: threading.Thread(target=print),
            "self.extra is a thread (threading.Thread); list it in transient and start it again",
        ),
        (lambda: socket.socket(), "self.extra is a socket (socket.socket); list it in transient and reopen it"),
        (lambda: open(os.devnull), "self.extra is an open file (io.TextIOWrapper); list it in transient and reopen it"),  # noqa: SIM115
        (
            lambda: (i for i in range(3)),
            "self.extra is a generator, which cannot be saved (TypeError: cannot pickle 'generator' object); "
            "list it in transient and rebuild it in on_restore",
        ),
    ],
)
def test_unserialisable_attributes_are_named_with_their_fix(make: Any, message: str) -> None:
    app = Chat()
    app.start()
    app.extra = make()  # type: ignore[attr-defined]
    try:
        with pytest.raises(UnserialisableStateError) as caught:
            capture(app, "chat")
        assert str(caught.value).startswith(f"cannot checkpoint 'chat': {message}")
    finally:
        closer = getattr(app.extra, "close", None)  # type: ignore[attr-defined]
        if closer is not None:
            closer()


def test_a_nested_culprit_is_named_by_its_path() -> None:
    app = Chat()
    app.start()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    app.rooms[0]["log"].append({"worker": proc})  # type: ignore[attr-defined]
    try:
        with pytest.raises(
            UnserialisableStateError, match=r"self\.rooms\[0\]\['log'\]\[1\]\['worker'\] is a subprocess"
        ) as caught:
            capture(app, "chat")
        assert "list 'rooms' in transient and start it again in on_restore" in str(caught.value)
    finally:
        proc.wait()


def test_a_culprit_in_an_object_attribute_is_named_by_its_path() -> None:
    app = Chat()
    app.start()
    app.points = [Point(1, 2), Point(3, 4)]  # type: ignore[attr-defined]
    app.points[1].tags = [io.BufferedReader(io.BytesIO(b""))]  # type: ignore[attr-defined]
    with pytest.raises(UnserialisableStateError, match=r"self\.points\[1\]\.tags\[0\] is an open file"):
        capture(app, "chat")


def test_an_app_that_fails_to_checkpoint_is_unchanged() -> None:
    app = Chat()
    app.start()
    app.sock = socket.socket()  # type: ignore[attr-defined]
    with pytest.raises(UnserialisableStateError):
        capture(app, "chat")
    app.sock.close()  # type: ignore[attr-defined]
    assert app.n == 1 and app.db.execute("select 1").fetchone() == (1,)
    del app.sock  # type: ignore[attr-defined]
    assert restore(through_chunks(capture(app, "chat"))).n == 1  # type: ignore[attr-defined]


def test_a_culprit_in_a_set_is_a_member_of_it() -> None:
    app = Chat()
    app.start()
    with socket.socket() as sock:
        app.peers = {sock}  # type: ignore[attr-defined]
        with pytest.raises(UnserialisableStateError, match=r"'chat': a member of self\.peers is a socket"):
            capture(app, "chat")


def test_locks_queues_and_events_come_back_new_and_free() -> None:
    app = Chat()
    app.start()
    app.lock, app.rlock, app.queue, app.event = threading.Lock(), threading.RLock(), queue.Queue(), threading.Event()  # type: ignore[attr-defined]
    app.queue.put("job")  # type: ignore[attr-defined]
    app.event.set()  # type: ignore[attr-defined]
    snapshot = capture(app, "chat")
    assert snapshot.serializer == "pickle"
    restored: Any = restore(through_chunks(snapshot))
    assert restored.queue.get_nowait() == "job" and restored.event.is_set()
    assert restored.lock.acquire(blocking=False) and restored.rlock.acquire(blocking=False)
    app.lock.acquire()  # type: ignore[attr-defined]
    with pytest.raises(UnserialisableStateError, match=r"self\.lock is a lock held between events"):
        capture(app, "chat")


def test_too_deep_a_chain_says_so() -> None:
    chain: Any = None
    for _ in range(100_000):
        chain = [chain]
    with pytest.raises(UnserialisableStateError, match="nested too deeply"):
        serialise(chain, "deep")


def _make_counter(start: int) -> Any:
    count = start

    def increment() -> int:
        nonlocal count
        count += 1
        return count

    return increment


def _make_factorial() -> Any:
    def factorial(n: int) -> int:
        return 1 if n <= 1 else n * factorial(n - 1)

    return factorial


def _defaults() -> Any:
    def inner(a: int = 1, *, key: str = "k") -> tuple[int, str]:
        return a, key

    return inner


def _make_box() -> tuple[Any, Any]:
    value = 0

    def get() -> int:
        return value

    def put(new: int) -> None:
        nonlocal value
        value = new

    return get, put


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.builds(lambda n, b: bytes([b]) * n, st.sampled_from([65_536, 100_000]), st.integers(0, 255))
    | st.builds(lambda n, c: c * n, st.sampled_from([70_000]), st.sampled_from(["a", "é"]))
    | hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=2, max_side=6))
    | st.builds(lambda n: np.arange(n, dtype=np.float64), st.sampled_from([8192, 20_000]))
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=5)
        | st.frozensets(st.integers(), max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(_values)
def test_any_value_round_trips(value: Any) -> None:
    restored = round_trip(value)
    assert _equal(restored, value)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):  # bit for bit, so NaN and NaT compare equal to themselves
        return isinstance(b, np.ndarray) and (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b)
