"""A scoring worker whose feed loses polls on the way to the loop with no seek after them: the
fault :mod:`services.scoring.continuity` guards against (a poll dropped as stale that was not,
records Faust stops yielding). ``TIERFLOW_TEST_LOSE_KEYS`` names the people whose polls are
lost, ``TIERFLOW_TEST_LOSE_POLLS`` which of their polls (default ``2,5``);
``TIERFLOW_TEST_LOSE_IN=getmany`` loses them inside Faust's getmany, after aiokafka handed the
records over (as Faust does when the flow stops mid-poll), instead of as whole polls before the
loop; ``TIERFLOW_TEST_UNCHECKED=1`` also turns the hole check off, to show what the fault does
without it."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

from services.scoring.__main__ import main
from services.scoring.continuity import Continuity
from services.scoring.feed import FeedConsumer, Poll, ScoringApp

# which polls (counted from 0) holding the test's people never reach the loop
LOST = {int(n) for n in os.environ.get("TIERFLOW_TEST_LOSE_POLLS", "2,5").split(",")}
PEOPLE = os.environ["TIERFLOW_TEST_LOSE_KEYS"].encode()  # the test's people's key prefix
_polls = itertools.count()
_current = ScoringApp.current
_getmany = FeedConsumer.getmany


def _lossy_current(app: ScoringApp, poll: Poll) -> bool:
    if not _current(app, poll):
        return False
    if not any((m.key or b"").startswith(PEOPLE) for m in poll.messages):
        return True  # other tests' people, on the same topic
    return next(_polls) not in LOST


async def _lossy_getmany(consumer: FeedConsumer, timeout: float) -> Any:
    lose: bool | None = None
    async for tp, message in _getmany(consumer, timeout):
        if (message.key or b"").startswith(PEOPLE):
            if lose is None:
                lose = next(_polls) in LOST
            if lose:
                continue
        yield tp, message


def _unchecked(_: Continuity, messages: Iterable[Any]) -> tuple[list[Any], dict[Any, int]]:
    return list(messages), {}


if os.environ.get("TIERFLOW_TEST_LOSE_IN") == "getmany":
    FeedConsumer.getmany = _lossy_getmany  # type: ignore[method-assign,assignment]
else:
    ScoringApp.current = _lossy_current  # type: ignore[method-assign,assignment]
if os.environ.get("TIERFLOW_TEST_UNCHECKED") == "1":
    Continuity.admit = _unchecked  # type: ignore[method-assign,assignment]
    Continuity.behind = lambda *_: {}  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
