"""core.lru: the one per-process cache: eviction order, close on eviction, one value per key under races."""
from __future__ import annotations

from core.lru import LRU, MISSING


def test_least_recently_used_goes_first_and_is_closed():
    closed = []
    cache = LRU(2, close=closed.append)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a", lambda: "never made") == "A"  # a is now the most recent
    cache.put("c", "C")
    assert closed == ["B"]
    assert cache.peek("b") is MISSING
    assert cache.peek("a") == "A" and cache.peek("c") == "C"


def test_a_value_made_twice_at_once_is_kept_once_and_the_other_closed():
    closed = []
    cache = LRU(4, close=closed.append)

    def make_while_another_thread_caches_it():
        cache.put("k", "first")  # what a second thread does while this make() runs
        return "second"

    assert cache.get("k", make_while_another_thread_caches_it) == "first"
    assert closed == ["second"]  # the loser is closed, not dropped open
    assert cache.get("k", lambda: "third") == "first"


def test_none_is_a_value_not_a_miss():
    made = []
    cache = LRU(2)
    assert cache.get("n", lambda: made.append(1)) is None
    assert cache.get("n", lambda: made.append(1)) is None
    assert made == [1]
