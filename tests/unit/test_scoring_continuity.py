"""The feed's hole check: what reaches the scoring loop continues each partition in offset order."""

from __future__ import annotations

from dataclasses import dataclass

from faust.types import TP

from services.scoring.continuity import Continuity

A = TP("tierflow.events.resolved", 0)
B = TP("tierflow.events.resolved", 1)


@dataclass(frozen=True)
class Msg:
    tp: TP
    offset: int


def run(tp: TP, start: int, end: int) -> list[Msg]:
    return [Msg(tp, offset) for offset in range(start, end)]


def test_records_that_continue_their_partition_pass() -> None:
    continuity = Continuity()
    continuity.expect(A, 10)
    continuity.expect(B, 0)
    batch = [*run(A, 10, 13), *run(B, 0, 2), Msg(A, 13)]
    assert continuity.admit(batch) == (batch, {})
    assert continuity.admit(run(A, 14, 16)) == (run(A, 14, 16), {})


def test_a_skipped_record_holds_back_the_rest_of_its_partition_only() -> None:
    continuity = Continuity()
    continuity.expect(A, 10)
    continuity.expect(B, 0)
    continuity.admit(run(A, 10, 12))
    # a poll of A was dropped on the way (12..19): the next one starts at 20
    kept, holes = continuity.admit([*run(A, 20, 23), *run(B, 0, 3)])
    assert kept == run(B, 0, 3)
    assert holes == {A: 12}
    # polls fetched before the seek back still hold later records: the hole stays where it was
    assert continuity.admit(run(A, 23, 25)) == ([], {A: 12})
    # fetched again from the hole, in order
    assert continuity.admit(run(A, 12, 30)) == (run(A, 12, 30), {})


def test_redeliveries_pass_and_do_not_move_the_expectation_back() -> None:
    continuity = Continuity()
    continuity.expect(A, 0)
    continuity.admit(run(A, 0, 10))
    # a rolled-back batch fetched again after a seek to the committed offset
    assert continuity.admit(run(A, 4, 12)) == (run(A, 4, 12), {})
    assert continuity.admit([Msg(A, 13)]) == ([], {A: 12})


def test_a_seek_sets_where_the_partition_continues() -> None:
    continuity = Continuity()
    continuity.expect(A, 0)
    continuity.admit(run(A, 0, 50))
    continuity.expect(A, 30)  # a rebalance: back to the committed offset
    assert continuity.admit(run(A, 30, 60)) == (run(A, 30, 60), {})
    # records removed by retention: the partition now starts at 100
    continuity.expect(A, 0)
    assert continuity.admit([Msg(A, 100)]) == ([], {A: 0})
    continuity.expect(A, 100)
    assert continuity.admit(run(A, 100, 102)) == (run(A, 100, 102), {})


def test_a_partition_never_sought_starts_where_its_first_record_is() -> None:
    continuity = Continuity()
    assert continuity.admit(run(A, 7, 9)) == (run(A, 7, 9), {})
    assert continuity.admit([Msg(A, 10)]) == ([], {A: 9})


def test_records_read_but_never_handed_on_show_when_the_feed_is_idle() -> None:
    continuity = Continuity()
    continuity.expect(A, 0)
    continuity.expect(B, 5)
    for message in run(A, 0, 8):
        continuity.read(message.tp, message.offset)
    continuity.admit(run(A, 0, 4))  # the poll of 4..7 was dropped, and nothing came after it
    assert continuity.behind() == {A: 4}
    continuity.expect(A, 4)  # fetched again
    assert continuity.behind() == {}
    for message in run(A, 4, 8):
        continuity.read(message.tp, message.offset)
    continuity.admit(run(A, 4, 8))
    assert continuity.behind() == {}
    # a dropped single record counts too
    continuity.read(B, 5)
    assert continuity.behind() == {B: 5}


def test_a_dropped_last_poll_shows_once_a_later_poll_reaches_the_loop() -> None:
    continuity = Continuity()
    continuity.restart({A: 0, B: 0})
    for message in run(A, 0, 4):
        continuity.read(message.tp, message.offset)
    dropped = continuity.mark()  # A's last records: no later record of A will show the hole
    for message in run(B, 0, 3):
        continuity.read(message.tp, message.offset)
    queued = continuity.mark()  # B stays busy, so the feed is never idle
    assert continuity.behind(queued) == {A: 0, B: 0}  # its poll has not reached the loop yet
    continuity.admit(run(B, 0, 3))  # the loop took B's poll, the last one; A's never came
    assert continuity.behind(queued) == {A: 0}
    assert continuity.behind(dropped) == {A: 0}
    continuity.expect(A, 0)  # fetched again: marks from before the seek say nothing any more
    assert continuity.behind(queued) == {}
    for message in run(A, 0, 4):
        continuity.read(message.tp, message.offset)
    continuity.admit(run(A, 0, 4))
    assert continuity.behind(continuity.mark()) == {}


def test_a_rebalance_restarts_every_partition_and_forgets_revoked_ones() -> None:
    continuity = Continuity()
    continuity.restart({A: 0, B: 0})
    for message in run(B, 0, 5):
        continuity.read(message.tp, message.offset)
    continuity.admit(run(A, 0, 3))  # B's poll was dropped by the rebalance that revoked B
    continuity.restart({A: 2})
    assert continuity.behind() == {}
    assert continuity.admit([*run(A, 2, 4), Msg(A, 5)]) == (run(A, 2, 4), {A: 4})
