"""Part buffers used again: what ``Spares`` keeps and hands out."""

from __future__ import annotations

from bucketzip.buffers import Spares


def test_a_buffer_given_back_is_taken_again() -> None:
    spares = Spares(16, keep=2)
    first = spares.take()
    assert len(first) == 16 and first == bytearray(16)  # none kept yet: a new one
    first[:] = b"x" * 16
    spares.give(first)
    assert spares.take() is first  # the same buffer, holding the earlier part's bytes
    assert spares.take() is not first  # and only once


def test_only_whole_buffers_and_only_keep_of_them_are_kept() -> None:
    spares = Spares(16, keep=2)
    shrunk = bytearray(10)  # a last part, shrunk in place
    spares.give(shrunk)
    a, b, c = bytearray(16), bytearray(16), bytearray(16)
    for buffer in (a, b, c):
        spares.give(buffer)
    taken = [spares.take(), spares.take(), spares.take()]
    assert taken[0] is b and taken[1] is a  # the two kept (last given, first taken)
    assert all(t is not x for t in taken[2:] for x in (a, b, c, shrunk))  # then new ones
