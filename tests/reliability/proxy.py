"""A small TCP proxy between a worker and the server that can stall, cut and refuse."""

from __future__ import annotations

import socket
import struct
import threading

from qubix_cli.demo import free_port

UP, DOWN = "up", "down"  # worker -> server, server -> worker


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.refusing = False
        self._flowing = {UP: threading.Event(), DOWN: threading.Event()}
        for flowing in self._flowing.values():
            flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self, *directions: str) -> None:
        """Hold the bytes going in these directions (they are sent on `flow`)."""
        for d in directions or (UP, DOWN):
            self._flowing[d].clear()

    def flow(self) -> None:
        for flowing in self._flowing.values():
            flowing.set()

    def cut(self) -> None:
        """Drop every open connection, as a router that lost its state does."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked on it; close alone does not
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.flow()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, UP), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, DOWN), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(65536):
                self._flowing[direction].wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
