"""One thread that owns the store's write connection and runs write tasks one at a time, in order."""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["Writer", "immediate"]

T = TypeVar("T")
Task = Callable[[sqlite3.Connection], Any]


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock at once; rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (a full disk: SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Writer:
    """Runs ``task(conn)`` on the writer thread. ``open_connection`` runs there first; its error is raised here."""

    def __init__(self, open_connection: Callable[[], sqlite3.Connection], name: str) -> None:
        self._tasks: queue.SimpleQueue[tuple[Task, Future[Any]] | None] = queue.SimpleQueue()
        opened: Future[sqlite3.Connection] = Future()
        self._thread = threading.Thread(target=self._run, args=(open_connection, opened), name=name, daemon=True)
        self._thread.start()
        self._conn = opened.result()

    def run(self, task: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``task`` on the writer thread and return its result (inline when called from that thread)."""
        if threading.current_thread() is self._thread:
            return task(self._conn)
        return self.submit(task).result()

    def submit(self, task: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Queue ``task``; the future holds its result or its exception."""
        future: Future[T] = Future()
        self._tasks.put((task, future))
        return future

    def close(self) -> None:
        """Finish queued tasks, close the connection, end the thread."""
        if self._thread.is_alive():
            self._tasks.put(None)
            self._thread.join()

    def _run(self, open_connection: Callable[[], sqlite3.Connection], opened: Future[sqlite3.Connection]) -> None:
        try:
            conn = open_connection()
        except BaseException as exc:
            opened.set_exception(exc)
            return
        opened.set_result(conn)
        try:
            while (item := self._tasks.get()) is not None:
                task, future = item
                if future.set_running_or_notify_cancel():
                    _settle(future, task, conn)
                # Not kept while waiting for the next task: a version's task holds all its chunks (256 MiB
                # stayed in the daemon after a large checkpoint until the next write).
                del item, task, future
        finally:
            conn.close()


def _settle(future: Future[Any], task: Task, conn: sqlite3.Connection) -> None:
    try:
        future.set_result(task(conn))
    except BaseException as exc:
        future.set_exception(exc)
