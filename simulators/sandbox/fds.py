"""File descriptors and pipes: exact reads and writes, readiness, and the private buffers that
job bytes pass through in the server (see "Memory hygiene" at ``_Server.next_request``)."""

from __future__ import annotations

import mmap
import os
import resource
import select

_HEADER_DIGITS = 10  # a request header's length, in decimal digits, precedes it
_SPILL_BYTES = 1 << 16  # where a _PrivateBuffer reads bytes beyond its capacity, to drop them


class _PrivateBuffer:
    """Job bytes (a payload, messages, stderr) in memory that no job ever maps.

    An anonymous mapping marked ``MADV_DONTFORK`` (absent from every process forked while it
    exists) and unmapped by ``close()``, which hands its pages back to the kernel, which zeroes
    them before any reuse. Keeps the first ``capacity`` bytes read; later ones land in a spill
    area and are dropped.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, capacity + _SPILL_BYTES)
        self._map.madvise(mmap.MADV_DONTFORK)
        self.view = memoryview(self._map)
        self.length = 0
        self.truncated = False

    def fill_exactly(self, fd: int, size: int) -> bool:
        """Read exactly ``size`` bytes from a blocking ``fd``; False at an early end of file."""
        while self.length < size:
            count = os.readv(fd, [self.view[self.length : size]])
            if count == 0:
                return False
            self.length += count
        return True

    def drain(self, fd: int) -> tuple[bool, bool]:
        """Read what a non-blocking ``fd`` holds: (a complete line arrived, end of file)."""
        got_line = False
        while True:
            start = self.length if self.length < self.capacity else self.capacity
            end = self.capacity if self.length < self.capacity else self.capacity + _SPILL_BYTES
            try:
                count = os.readv(fd, [self.view[start:end]])
            except BlockingIOError:
                return got_line, False
            if count == 0:
                return got_line, True
            got_line = got_line or self._map.find(b"\n", start, start + count) >= 0
            if start < self.capacity:
                self.length += count
            else:
                self.truncated = True

    def keep_complete_lines(self) -> None:
        self.length = self._map.rfind(b"\n", 0, self.length) + 1

    def close(self) -> None:
        self.view.release()
        try:
            self._map.close()
        except BufferError:  # a slice of it lives on (an exception is unwinding): wipe it instead
            self._map[:] = bytes(len(self._map))


def _read_fd(fd: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes from a blocking ``fd``; None at an early end of file."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _select_read(fd: int, timeout: float) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)


def _reader_gone(fd: int) -> bool:
    """True when nobody holds the read end of the pipe whose write end is ``fd``."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
