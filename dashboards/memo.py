"""A thread-safe LRU memo that computes each missing key once ("single flight").

functools.lru_cache lets concurrent callers of a missing key all compute it: on a
page load, Dash fires a page's callbacks in parallel, and each would read the same
cold zarr slice at once, competing for the same cores. Here the first caller
computes, the others wait for its value (or its exception, raised to each of them).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    """Bounded LRU: ``get(key, compute)`` returns the cached value or ``compute()``'s."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._inflight: dict[Hashable, threading.Event] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        while True:
            with self._lock:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key]
                event = self._inflight.get(key)
                owner = event is None
                if owner:
                    event = self._inflight[key] = threading.Event()
            if owner:
                break
            event.wait()  # then look again: the value, or (owner failed) compute ourselves
        try:
            value = compute()
            with self._lock:
                self._values[key] = value
                while len(self._values) > self.maxsize:
                    self._values.popitem(last=False)
            return value
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            event.set()

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


def memo(maxsize: int) -> Callable[[Callable], Callable]:
    """Decorator: memoize a function of hashable positional arguments (``cache_clear()``
    empties it, as with functools.lru_cache)."""

    def decorate(fn: Callable) -> Callable:
        cache = Memo(maxsize)

        @functools.wraps(fn)
        def wrapper(*args):
            return cache.get(args, lambda: fn(*args))

        wrapper.cache_clear = cache.clear
        wrapper.cache = cache
        return wrapper

    return decorate
