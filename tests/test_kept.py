"""``retwin._kept.Kept``: what a process keeps of the values it made lately."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from retwin._kept import Kept


def test_the_least_recently_used_goes_first() -> None:
    kept: Kept[str] = Kept(max_items=2)
    kept.put("a", "A")
    kept.put("b", "B")
    assert kept.get("a") == "A"  # now "b" is the least recently used
    kept.put("c", "C")
    assert kept.get("b") is None
    assert (kept.get("a"), kept.get("c"), len(kept)) == ("A", "C", 2)


def test_sizes_bound_what_is_kept() -> None:
    kept: Kept[np.ndarray] = Kept(max_items=100, max_bytes=1000, size=lambda a: a.nbytes)
    for k in range(5):
        kept.put(k, np.zeros(50))  # 400 bytes each: two fit
    assert len(kept) == 2 and kept.nbytes == 800
    assert kept.get(3) is not None and kept.get(4) is not None and kept.get(2) is None
    kept.put("big", np.zeros(200))  # 1,600 bytes alone: made, not kept
    assert kept.get("big") is None and len(kept) == 2
    kept.put(4, np.zeros(10))  # a key put again counts once, at its new size
    assert kept.nbytes == 480


def test_get_or_make_makes_a_value_once() -> None:
    kept: Kept[list[int]] = Kept(max_items=4)
    made: list[int] = []

    def make() -> list[int]:
        made.append(1)
        return [len(made)]

    first = kept.get_or_make("k", make)
    assert kept.get_or_make("k", make) is first
    assert made == [1] and (kept.hits, kept.misses) == (1, 1)
    kept.clear()
    assert kept.get_or_make("k", make) == [2] and (kept.hits, kept.misses) == (0, 1)


def test_threads_share_one_store() -> None:
    kept: Kept[int] = Kept(max_items=50, max_bytes=400, size=lambda _: 8)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(2000):
                assert kept.get_or_make((i + offset) % 80, lambda i=i: i) is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(kept) <= 50 and kept.nbytes == 8 * len(kept)
    assert kept.hits + kept.misses == 8000


def test_asked_twice_keeps_only_what_comes_back() -> None:
    kept: Kept[int] = Kept(max_items=2, asked_twice=True)
    assert kept.get_or_make("a", lambda: 1) == 1 and len(kept) == 0  # asked once
    assert kept.get_or_make("a", lambda: 2) == 2 and len(kept) == 1  # again: kept
    assert kept.get_or_make("a", lambda: 3) == 2  # from now on, the kept value
    for k in range(8):  # eight keys asked once each: the memory of "b" is pushed out
        kept.get_or_make(("other", k), lambda: 0)
    kept.get_or_make("b", lambda: 4)
    for k in range(9):
        kept.get_or_make(("more", k), lambda: 0)
    kept.get_or_make("b", lambda: 5)  # asked twice, but too far apart: not kept
    assert kept.get("b") is None and kept.get("a") == 2


@pytest.mark.parametrize("bad", [{"max_items": 0}, {"max_items": 2, "max_bytes": 10}])
def test_bounds_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Kept(**bad)
