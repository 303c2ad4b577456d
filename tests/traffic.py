"""gRPC traffic for the serving tests: a fixed load checked against expected answers
(:func:`fixed_load`), and background clients for hot-swap tests that query until stopped,
recording which model version answered each request (:class:`BackgroundTraffic`)."""

from __future__ import annotations

import threading
import time

import numpy as np

from nann_tf.serving.client import RetrievalClient

__all__ = ["BackgroundTraffic", "fixed_load", "wait_for"]


def fixed_load(address: str, model: str, histories, expected, *, clients: int = 8,
               requests: int = 500, stride: int = 1, version: int | None = None,
               timeout_s: float = 60, retries: int = 3) -> tuple[list, list, float]:
    """``clients`` threads each send ``requests`` ``serving_default`` requests, one history row
    each (client ``w``'s i-th request takes row ``(stride * w + i) % len(histories)``), and
    compare every answer with ``expected[row]`` (a dict of output arrays).

    Returns:
      ``(latencies in seconds, errors, elapsed seconds)``; the clock starts once every client
      is connected.
    """
    errors, latencies = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_thread(w):
        mine = []
        with RetrievalClient(address, model, timeout_s=timeout_s, retries=retries) as client:
            barrier.wait()
            for i in range(requests):
                j = (stride * w + i) % len(histories)
                t0 = time.perf_counter()
                try:
                    out = client.predict({"hist_item_ids": histories[j][None]},
                                         version=version).outputs
                    mine.append(time.perf_counter() - t0)
                    if not all(np.array_equal(out[a], expected[j][a]) for a in expected[j]):
                        raise AssertionError(f"client {w} request {i}: wrong answer for "
                                             f"history {j}")
                except Exception as e:  # collected; the tests assert there are none
                    with lock:
                        errors.append(repr(e))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client_thread, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def wait_for(predicate, timeout_s: float, what: str, errors: list | None = None) -> None:
    """Polls ``predicate`` until true; fails after ``timeout_s`` or as soon as ``errors`` fills."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline or errors:
            raise AssertionError(f"timed out waiting for {what}; errors: {(errors or [])[:3]}")
        time.sleep(0.05)


class BackgroundTraffic:
    """``clients`` threads each send ``serving_default`` requests for rows of ``histories``.

    ``results`` holds ``(client, model_version, history_index, outputs)``; ``errors`` every
    failure. Use as a context manager: leaving it stops and joins the clients.
    """

    def __init__(self, address: str, model: str, histories, clients: int = 4,
                 timeout_s: float = 60, pause_s: float = 0.0):
        self.address, self.model, self.histories = address, model, histories
        self.timeout_s, self.pause_s = timeout_s, pause_s
        self.results: list = []
        self.errors: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(clients)]

    def _run(self, w: int) -> None:
        with RetrievalClient(self.address, self.model, timeout_s=self.timeout_s,
                             retries=0) as client:
            i = 0
            while not self._stop.is_set():
                j = (w + i) % len(self.histories)
                i += 1
                try:
                    p = client.predict({"hist_item_ids": self.histories[j][None]})
                    with self._lock:
                        self.results.append((w, p.model_version, j, p.outputs))
                except Exception as e:  # collected; the tests assert there are none
                    with self._lock:
                        self.errors.append(repr(e))
                if self.pause_s:
                    time.sleep(self.pause_s)

    def count(self, version: int, client: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.results
                       if r[1] == version and (client is None or r[0] == client))

    def versions_seen_by(self, client: int) -> list[int]:
        return [v for (w, v, _, _) in self.results if w == client]

    def __enter__(self) -> "BackgroundTraffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
