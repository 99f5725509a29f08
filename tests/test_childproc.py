from __future__ import annotations

import threading

from llama_tui.core.childproc import EventStream


def test_every_consumer_sees_the_end_and_drain_does_not_block():
    s: EventStream[int] = EventStream()
    s.put(1)
    s.put(2)
    assert s.drain() == [1, 2] and s.drain() == []
    t = threading.Timer(0.05, lambda: (s.put(3), s.close()))
    t.start()
    assert list(s.iter()) == [3]
    assert list(s.iter()) == [] and s.drain() == []  # a later consumer stops at once too
    t.join()


def test_iter_gives_up_after_the_timeout():
    s: EventStream[int] = EventStream()
    s.put(7)
    assert list(s.iter(timeout=0.05)) == [7]
