"""Network connections that survive moves: the sockets stay on the app's home host, the app gets their events.

::

    import migrated
    import migrated.net

    class Echo(migrated.App):
        def start(self):
            self.listener = migrated.net.listen(7000)   # listens on the home host, wherever the app runs

        def on_accept(self, conn):                      # conn.peer is "ip:port"
            conn.send(b"hello\\n")

        def on_data(self, conn, data):
            conn.send(data)

        def on_close(self, conn):                       # the peer closed it, or it was lost
            print("bye", conn.peer)

``Conn`` and ``Listener`` objects are saved with the app's state: after a restore or a move they are the same
connections, still open. Errors a user can cause are ``OSError`` subclasses: ``ConnectionRefusedError``,
``TimeoutError``, an ``OSError`` for a port in use, ``BrokenPipeError`` for a send on a closed connection.
"""

from migrated.runtime._net import Conn, Listener, connect, listen

__all__ = ["Conn", "Listener", "connect", "listen"]
