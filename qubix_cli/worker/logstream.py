"""A running job's output on its way to the coordinator, in bounded memory.

Output is buffered (at most `BUFFER_BYTES`) and sent in chunks of at most `CHUNK_BYTES`,
at most one a second, so a job that prints without pause costs the coordinator a request
a second, not one per line. What does not fit in the buffer, and everything after the
coordinator has stored all it keeps of one job, is dropped a whole line at a time and
counted; the last 64 KiB of each stream still come with the result.
"""

from __future__ import annotations

import threading
from typing import Callable

BUFFER_BYTES = 256 * 1024
CHUNK_BYTES = 64 * 1024
INTERVAL_S = 1.0
Send = Callable[[str, int], bool]  # (text, lines dropped before it) -> take more?


class LogStream:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._buffer = bytearray()
        self._dropped = 0  # lines dropped since the last chunk sent
        self._total_dropped = 0
        self._open = True  # the coordinator takes more
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logs", daemon=True)
        self._thread.start()

    def feed(self, lines: bytes) -> None:
        """Take whole lines (the last may lack its newline only at the end of a stream):
        kept if they fit, else dropped and counted."""
        with self._lock:
            if self._open and len(self._buffer) + len(lines) <= BUFFER_BYTES:
                self._buffer += lines
            else:
                self._drop(max(1, lines.count(b"\n")))

    def _drop(self, lines: int) -> None:
        self._dropped += lines
        self._total_dropped += lines

    def _run(self) -> None:
        while not self._closed.wait(INTERVAL_S):
            self._flush()

    def _flush(self) -> bool:
        """Send one chunk (whole lines where it can); whether there was anything to send."""
        with self._lock:
            if not self._open or not (self._buffer or self._dropped):
                return False
            cut = len(self._buffer)
            if cut > CHUNK_BYTES:
                newline = self._buffer.rfind(b"\n", 0, CHUNK_BYTES)
                cut = newline + 1 if newline >= 0 else CHUNK_BYTES
            chunk, dropped = bytes(self._buffer[:cut]), self._dropped
            del self._buffer[:cut]
            self._dropped = 0
        if not self._send(chunk.decode("utf-8", "replace"), dropped):
            with self._lock:
                self._open = False
                self._drop(self._buffer.count(b"\n"))
                self._buffer.clear()
        return True

    def close(self) -> int:
        """Send what is left (at most a buffer's worth); the lines dropped in all."""
        self._closed.set()
        self._thread.join()
        while self._flush():
            pass
        return self._total_dropped
