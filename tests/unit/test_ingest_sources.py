"""The write-key directory while its database fails: keys checked before keep working, others get
503, and after the pause only one request at a time waits on the database again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.ingest.sources import SourceDirectory, SourceRef
from shared.errors import Unauthorized, Unavailable

SITE = SourceRef("site", "site")


class Directory(SourceDirectory):
    """The directory over a stand-in database of one key that can be made to hang."""

    def __init__(self) -> None:
        super().__init__(None, ttl_s=0.05, timeout_s=0.2, retry_after_s=1)  # type: ignore[arg-type]
        self.hanging = False
        self.lookups = 0

    async def _lookup(self, write_key: str) -> SourceRef | None:
        self.lookups += 1
        if self.hanging:
            await asyncio.sleep(10)
        return SITE if write_key == "wk_site" else None


async def _many(directory: Directory, key: str, count: int) -> list[Any]:
    calls = (directory.authenticate(key) for _ in range(count))
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_a_hanging_database_is_waited_on_by_one_request_at_a_time() -> None:
    directory = Directory()
    assert await directory.authenticate("wk_site") == SITE
    with pytest.raises(Unauthorized):
        await directory.authenticate("wk_other")
    directory.hanging = True
    await asyncio.sleep(0.06)  # both answers expired
    first = await _many(directory, "wk_site", 5)  # none knew yet: each waited the timeout
    assert first == [SITE] * 5
    assert directory.lookups == 2 + 5
    during = await _many(directory, "wk_new", 20)  # within Retry-After: nobody waits
    assert all(isinstance(answer, Unavailable) for answer in during)
    assert directory.lookups == 7
    await asyncio.sleep(1.05)  # the pause is over: one request probes, the rest answer at once
    probe = asyncio.ensure_future(directory.authenticate("wk_site"))
    await asyncio.sleep(0)
    others = await _many(directory, "wk_site", 20)
    assert others == [SITE] * 20
    assert not probe.done()  # the others were answered while the probe still waits
    assert await probe == SITE  # after its own timeout, from the cache
    assert directory.lookups == 8
    directory.hanging = False
    await asyncio.sleep(1.05)
    with pytest.raises(Unauthorized):  # the database answers again: refused, not 503
        await directory.authenticate("wk_other")
    assert directory.lookups == 9
