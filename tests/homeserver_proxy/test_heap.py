"""The proxy gives memory back once a crowd of long-polls has ended, and only then: not per
poll, not while the crowd is still parked, not before the upstream connections it left in
the pool have been closed (they hold much of its memory)."""

from __future__ import annotations

import gc
import weakref

from homeserver_proxy.heap import HeapTrimmer, give_back_memory, resident_bytes


class Crowd:
    """Open long-polls, a clock and the trims done, all moved by the test."""

    def __init__(self) -> None:
        self.open = 0
        self.now = 0.0
        self.trims = 0

    def trimmer(self, *, min_fall: int = 1000, settle_s: float = 12.0) -> HeapTrimmer:
        async def release() -> None:
            self.trims += 1

        return HeapTrimmer(
            lambda: self.open,
            min_fall=min_fall,
            settle_s=settle_s,
            release=release,
            clock=lambda: self.now,
        )

    async def look(self, trimmer: HeapTrimmer, *, after_s: float = 5.0) -> bool:
        self.now += after_s
        return await trimmer.check()


async def test_memory_goes_back_once_a_crowd_of_polls_has_ended_and_settled() -> None:
    crowd = Crowd()
    trimmer = crowd.trimmer()
    crowd.open = 3000
    assert not await crowd.look(trimmer)
    crowd.open = 10  # the polls were answered
    assert not await crowd.look(trimmer)  # their upstream connections are still in the pool
    assert not await crowd.look(trimmer)  # 5 s
    assert not await crowd.look(trimmer)  # 10 s
    assert await crowd.look(trimmer)  # 15 s: settled
    assert crowd.trims == 1
    for _ in range(11):  # not again while nothing changes...
        assert not await crowd.look(trimmer)
    assert await crowd.look(trimmer)  # ... but once more a minute later (the aftermath)
    assert crowd.trims == 2
    for _ in range(30):  # and then no more
        assert not await crowd.look(trimmer)
    assert crowd.trims == 2


async def test_polls_coming_and_going_in_small_numbers_never_trim() -> None:
    crowd = Crowd()
    trimmer = crowd.trimmer()
    for step in range(100):
        crowd.open = 500 + (step % 2) * 400  # 900 -> 500 -> 900: a fall of 400
        await crowd.look(trimmer)
    assert crowd.trims == 0


async def test_a_crowd_that_comes_back_before_settling_is_not_trimmed() -> None:
    crowd = Crowd()
    trimmer = crowd.trimmer()
    crowd.open = 4000
    await crowd.look(trimmer)
    crowd.open = 100  # a reconnect wave: all answered at once...
    await crowd.look(trimmer)
    crowd.open = 3900  # ... and all parked again
    for _ in range(10):
        assert not await crowd.look(trimmer)
    assert crowd.trims == 0


async def test_a_fall_by_less_than_half_is_not_a_crowd_ending() -> None:
    crowd = Crowd()
    trimmer = crowd.trimmer()
    crowd.open = 10_000
    await crowd.look(trimmer)
    crowd.open = 6_000  # 4,000 fewer, but most are still parked
    for _ in range(10):
        await crowd.look(trimmer)
    assert crowd.trims == 0
    crowd.open = 4_000
    for _ in range(4):
        await crowd.look(trimmer)
    assert crowd.trims == 1


async def test_giving_memory_back_frees_cycles_and_runs_the_trim() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    trims: list[int] = []
    alive = Node()
    gone = weakref.ref(Node())  # a cycle: reference counting alone never frees it
    gc.disable()
    try:
        await give_back_memory(lambda: trims.append(1))
    finally:
        gc.enable()
    assert gone() is None
    assert trims == [1]
    assert alive.me is alive
    assert resident_bytes() > 0
