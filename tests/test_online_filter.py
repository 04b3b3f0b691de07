"""Online prompt filtering's bookkeeping by hand: which groups are kept, full batches only, surplus
carried to the next step, what was dropped counted."""

from __future__ import annotations

import pytest

from retool.training.online_filter import FilterBuffer, OnlineFilter


def test_groups_outside_the_accuracy_window_are_dropped():
    f = OnlineFilter(accuracy=(0.2, 0.8))
    assert f.keeps([1, 0, 0, 0]) and f.keeps([1, 1, 1, 0]) and f.keeps([1, 0])
    assert not f.keeps([1, 1, 1, 1]) and not f.keeps([0, 0, 0, 0]) and not f.keeps([])
    assert not OnlineFilter(accuracy=(0.3, 0.7)).keeps([1, 0, 0, 0])  # 0.25 < 0.3
    assert f.to_sample(3) == 6 and OnlineFilter(oversample=1.0).to_sample(3) == 3
    with pytest.raises(ValueError):
        OnlineFilter(accuracy=(0.8, 0.2))


def test_the_buffer_fills_whole_batches_and_carries_the_surplus():
    buf = FilterBuffer(OnlineFilter())
    offers = [("a", [1, 1, 1, 1]), ("b", [1, 0, 1, 0]), ("c", [0, 0, 0, 0]), ("d", [0, 0, 0, 1])]
    kept = [buf.offer(g, r) for g, r in offers]
    assert kept == [False, True, False, True]
    assert buf.take(3) is None and buf.needed(3) == 1  # not enough yet: sample another round
    buf.offer("e", [1, 0, 0, 0])
    buf.offer("f", [1, 1, 0, 0])
    assert buf.take(3) == ["b", "d", "e"]
    assert buf.kept == ["f"]  # carried to the next step
    assert buf.take(2) is None and buf.take(2, force=True) == ["f"]
    stats = buf.stats()
    assert stats["filter/offered"] == 6 and stats["filter/dropped"] == 2
    assert stats["filter/dropped_all_correct"] == 1 and stats["filter/dropped_all_wrong"] == 1
    assert stats["filter/kept_share"] == pytest.approx(4 / 6)
