"""`LRU`: the one least-recently-used cache of relaylab, shared by threads.

Used for what is expensive to compute and read the same way by every caller: the explorer's point arrays and rendered
PNGs (bounded in bytes), the live explainer's passes. It is bounded by a number of items, by a total size, or both;
the size of an item is `size(value)` (e.g. `len` of PNG bytes). The newest item is always kept, even when it alone
exceeds `max_bytes`, so `get` returns what it computed and the next `get` of the same key is a hit.

`compute` runs outside the lock, so a slow computation does not hold up hits on other keys; two threads missing the
same key at once may both compute it, and both get the value stored first (callers can rely on getting the very object
the cache holds).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRU:
    """`get(key, compute)` returns the stored value for `key`, computing and storing it on a miss; the least recently
    used items are dropped while more than `max_items` are held or their sizes add up to more than `max_bytes`."""

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 size: Callable[[Any], int] | None = None):
        if max_items is None and max_bytes is None:
            raise ValueError("an LRU needs max_items, max_bytes or both")
        if max_bytes is not None and size is None:
            raise ValueError("max_bytes needs a size function (the size of a value)")
        self.max_items, self.max_bytes, self.size = max_items, max_bytes, size
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        return self.put(key, compute(), replace=False)

    def put(self, key: Hashable, value: Any, replace: bool = True) -> Any:
        """Store `value` (as the most recently used); the value now held for `key`. With replace=False a value
        already held is kept and returned instead."""
        nbytes = self.size(value) if self.size is not None else 0
        with self._lock:
            if key in self._items:
                if not replace:
                    self._items.move_to_end(key)
                    return self._items[key][0]
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
        self.trim()
        return value

    def trim(self) -> None:
        """Drop the least recently used items until the bounds hold again (after a bound was lowered)."""
        with self._lock:
            while len(self._items) > 1 and self._over():
                self._bytes -= self._items.popitem(last=False)[1][1]

    def _over(self) -> bool:
        return (self.max_items is not None and len(self._items) > self.max_items) or \
            (self.max_bytes is not None and self._bytes > self.max_bytes)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        """The summed sizes of the held values (0 without a size function)."""
        return self._bytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
