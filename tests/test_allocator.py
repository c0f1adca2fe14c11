"""``allocator``: the collector kept off what a process makes once to keep (``lasting``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from bucketzip.allocator import lasting


@pytest.fixture(autouse=True)
def _collector_as_it_was() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # the test process's objects go back to being collected
    if enabled:
        gc.enable()
    else:
        gc.disable()


def _tracked(obj: object) -> bool:
    """Whether a collection would look at ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


def test_nothing_is_collected_inside_and_what_was_made_is_left_out_after() -> None:
    gc.enable()
    collections = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(count)
    try:
        with lasting():
            assert not gc.isenabled()
            made = [[i] for i in range(50_000)]  # enough allocations for ~70 young collections
        assert collections == []
    finally:
        gc.callbacks.remove(count)
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)
    assert not _tracked(made) and not _tracked(made[-1])
    after: list[int] = []
    assert _tracked(after)  # what is made afterwards is collected as usual


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with lasting():
        pass
    assert not gc.isenabled()


def test_an_error_inside_still_turns_the_collector_back_on() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), lasting():
        raise RuntimeError("boom")
    assert gc.isenabled()
