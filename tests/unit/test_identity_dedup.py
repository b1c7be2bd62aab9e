"""Which sightings of an event id are re-sends (dropped) and which are redeliveries (forwarded)."""

from datetime import timedelta

from services.identity.dedup import FirstSighting, Sighting, find_duplicates
from tests.factories import T0

WINDOW = timedelta(hours=24)


def test_a_new_id_is_kept() -> None:
    flags = find_duplicates([Sighting("e1", 0, 10)], {}, now=T0, window=WINDOW)
    assert flags == [False]


def test_a_resend_at_another_offset_is_a_duplicate() -> None:
    known = {"e1": FirstSighting(0, 10, T0 - timedelta(hours=1))}
    flags = find_duplicates([Sighting("e1", 0, 99)], known, now=T0, window=WINDOW)
    assert flags == [True]


def test_kafka_redelivering_the_same_record_is_not_a_duplicate() -> None:
    known = {"e1": FirstSighting(2, 10, T0 - timedelta(minutes=5))}
    flags = find_duplicates([Sighting("e1", 2, 10)], known, now=T0, window=WINDOW)
    assert flags == [False]


def test_a_resend_after_the_window_counts_again() -> None:
    known = {"e1": FirstSighting(0, 10, T0 - timedelta(hours=25))}
    flags = find_duplicates([Sighting("e1", 0, 99)], known, now=T0, window=WINDOW)
    assert flags == [False]


def test_repeats_inside_one_batch_keep_only_the_first() -> None:
    batch = [Sighting("e1", 1, 5), Sighting("e2", 1, 6), Sighting("e1", 1, 7)]
    flags = find_duplicates(batch, {}, now=T0, window=WINDOW)
    assert flags == [False, False, True]
