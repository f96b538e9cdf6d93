"""relaylab.cache.LRU: bounded by items and by bytes, least recently used first out, one stored value per key under
concurrent misses."""

from __future__ import annotations

import threading

import pytest

from relaylab.cache import LRU


def test_bounded_by_items_least_recently_used_goes_first():
    cache = LRU(max_items=2)
    computed = []
    make = lambda value: (lambda: computed.append(value) or value)
    assert cache.get("a", make(1)) == 1 and cache.get("a", make(9)) == 1 and computed == [1]
    cache.get("b", make(2))
    cache.get("a", make(9))  # a is now the most recently used
    cache.get("c", make(3))  # a third item: b goes
    assert "a" in cache and "b" not in cache and "c" in cache and len(cache) == 2
    assert cache.get("b", make(4)) == 4 and computed == [1, 2, 3, 4]
    assert cache.put("c", 30) == 30 and cache.get("c", make(99)) == 30  # put replaces


def test_bounded_by_bytes_keeps_at_least_the_newest():
    cache = LRU(max_bytes=250, size=len)
    first = cache.get("a", lambda: b"a" * 100)
    assert cache.get("a", lambda: b"x") is first and cache.nbytes == 100
    cache.get("b", lambda: b"b" * 100)
    cache.get("a", lambda: b"x")
    cache.get("c", lambda: b"c" * 100)  # 300 bytes > 250: b goes
    assert sorted(k for k in "abc" if k in cache) == ["a", "c"] and cache.nbytes == 200
    big = cache.get("d", lambda: b"d" * 1000)  # alone over the bound: kept, everything older goes
    assert len(cache) == 1 and cache.get("d", lambda: b"x") is big and cache.nbytes == 1000
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_both_bounds_apply():
    cache = LRU(max_items=3, max_bytes=10, size=len)
    for key in "abcd":
        cache.get(key, lambda: "xx")
    assert len(cache) == 3  # the item bound: 6 bytes only
    cache.get("e", lambda: "x" * 8)
    assert [k for k in "abcde" if k in cache] == ["d", "e"]  # the byte bound: 2 + 8


def test_concurrent_misses_all_get_the_one_stored_value():
    cache = LRU(max_items=4)
    start = threading.Barrier(8)
    results = []

    def worker():
        start.wait()
        results.append(cache.get("key", lambda: object()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r is results[0] for r in results) and len(cache) == 1


def test_a_bound_is_required():
    with pytest.raises(ValueError, match="max_items, max_bytes"):
        LRU()
    with pytest.raises(ValueError, match="size function"):
        LRU(max_bytes=10)
