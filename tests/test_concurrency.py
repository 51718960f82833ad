"""Concurrent searches from many Python threads, and add concurrent with search."""

from __future__ import annotations

import threading

import numpy as np

import evidex
from conftest import clustered, recall_at_k, run_on_threads


def test_concurrent_searches_agree_with_serial() -> None:
    data = clustered(3_000, 24)
    queries = clustered(200, 24, seed=1)
    index = evidex.HNSWIndex(24, "l2")
    index.add(data)
    expected = index.search(queries, k=10, ef=80, num_threads=1)[0]
    results: dict[int, np.ndarray] = {}

    def work(t: int) -> None:
        results[t] = np.stack([index.search(q, k=10, ef=80)[0] for q in queries])

    run_on_threads(work, 6)
    assert len(results) == 6
    for out in results.values():
        np.testing.assert_array_equal(out, expected)


def test_add_concurrent_with_search() -> None:
    data = clustered(6_000, 16)
    index = evidex.HNSWIndex(16, "l2", max_elements=6_000)
    index.add(data[:1_000])
    stop = threading.Event()
    errors: list[BaseException] = []
    seen_sizes: list[int] = []

    def searcher() -> None:
        rng = np.random.default_rng(threading.get_ident() % 1000)
        try:
            while not stop.is_set():
                q = data[rng.integers(0, 6_000, 8)]
                ids, dist = index.search(q, k=5, ef=32)
                assert (ids >= 0).all() and (ids < 6_000).all()
                assert np.isfinite(dist).all()
                seen_sizes.append(len(index))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(1_000, 6_000, 500):
        index.add(data[start : start + 500], np.arange(start, start + 500), num_threads=2)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen_sizes) > 0 and len(index) == 6_000
    truth, _ = evidex.exact_knn(data, data[:100], 10)
    assert recall_at_k(index.search(data[:100], k=10, ef=100)[0], truth, 10) > 0.95


def test_resize_while_searching_is_safe() -> None:
    data = clustered(2_000, 8)
    index = evidex.HNSWIndex(8, "l2", max_elements=2_000)
    index.add(data)
    stop = threading.Event()
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            while not stop.is_set():
                index.search(data[:16], k=3)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=searcher)
    t.start()
    for size in range(2_000, 12_000, 1_000):
        index.resize(size)
    stop.set()
    t.join()
    assert not errors


def _finishes(target, seconds: float = 120.0) -> bool:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive()


def test_a_resize_is_not_starved_by_a_stream_of_searches() -> None:
    data = clustered(3_000, 16)
    index = evidex.HNSWIndex(16, max_elements=3_000)
    index.add(data)
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            index.search(data[:64], k=5, num_threads=1)

    threads = [threading.Thread(target=searcher, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        assert _finishes(lambda: [index.resize(3_000 + 100 * i) for i in range(1, 21)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert index.max_elements == 5_000


def test_python_filters_and_a_waiting_writer_do_not_deadlock() -> None:
    # A callable filter holds the GIL while it searches; a writer queued on the lock
    # must not leave a second callable search holding the GIL while it waits.
    data = clustered(2_000, 8)
    index = evidex.HNSWIndex(8, max_elements=2_000)
    index.add(data)
    stop = threading.Event()
    errors: list[BaseException] = []

    def filtered() -> None:
        try:
            while not stop.is_set():
                index.search(data[:4], k=3, filter=lambda i: i % 2 == 0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=filtered, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert _finishes(lambda: [index.resize(2_000 + 10 * i) for i in range(1, 41)])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
