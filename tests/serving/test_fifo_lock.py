from __future__ import annotations

import threading

import pytest

from teacher_service.serving.infra.fifo_lock import FifoLock
from tests.servers import wait_until


def test_waiters_get_the_lock_in_the_order_they_asked():
    lock = FifoLock()
    order: list[int] = []

    def worker(k: int) -> None:
        with lock:
            order.append(k)

    lock.acquire()
    threads = []
    for k in range(6):
        thread = threading.Thread(target=worker, args=(k,))
        thread.start()
        threads.append(thread)
        wait_until(lambda: len(lock._waiters) == k + 1, 5, f"thread {k} waiting")  # queued before the next asks
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == list(range(6))


def test_lock_is_free_again_after_the_last_holder_and_refuses_a_stray_release():
    lock = FifoLock()
    with lock:
        pass
    with lock:  # free again: would block forever if the release had not freed it
        pass
    with pytest.raises(RuntimeError, match="unheld"):
        lock.release()
