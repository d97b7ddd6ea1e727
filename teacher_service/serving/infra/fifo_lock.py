"""A lock that serves threads in the order they asked for it.

`threading.Lock` makes no such promise: the thread that just released it may take it again before a
woken waiter gets the GIL back, so one request can be passed over by later ones. Here the lock is
handed to the longest waiter on release, so a request's wait is bounded by those ahead of it.
(In the service benchmark this did not measurably change the latency tail; the long waits there
came from the thread pool's queue, see api/deps.py.)
"""

from __future__ import annotations

import threading
from collections import deque


class FifoLock:
    def __init__(self) -> None:
        self._mutex = threading.Lock()  # guards the fields below, held only briefly
        self._held = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            baton = threading.Lock()
            baton.acquire()
            self._waiters.append(baton)
        baton.acquire()  # blocks until release() hands the lock to us; _held stays True

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unheld FifoLock")
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
