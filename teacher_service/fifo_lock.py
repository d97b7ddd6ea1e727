"""A lock that serves threads in the order they asked for it.

`threading.Lock` makes no such promise: under load, the thread that just released it usually takes
it again before a woken waiter gets the GIL back, and an unlucky request can wait for seconds
while others pass it. Here the lock is handed to the longest waiter on release.
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
