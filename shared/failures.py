"""Telling a record that can never be processed from a failure that waiting cures.

A consumer that re-reads a failing batch is right when the database or the broker is away, and
wrong when one record fails the same way every time: that record blocks its partition forever.
Only failures that are about the record's content count as poison — a value no column or
contract accepts, a constraint it breaks, an output too large for the broker. Anything else
(lost connections, timeouts, serialization conflicts, a missing table during a deploy, a bug)
is retried, because dead-lettering a whole stream over an outage would be worse than waiting.
"""

from __future__ import annotations

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from pydantic import ValidationError

POISON_SQLSTATE_CLASSES = frozenset({"22", "23"})
"""Data exception and integrity constraint violation: the row itself is refused."""


def _chain(error: BaseException) -> list[BaseException]:
    """The error and what it explicitly wraps (``raise ... from``, SQLAlchemy's ``orig``); not
    ``__context__``, which is whatever was being handled when it happened."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        orig = getattr(current, "orig", None)
        pending += [current.__cause__, orig if isinstance(orig, BaseException) else None]
    return seen


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of the first database error in the chain (asyncpg names it ``sqlstate``)."""
    for part in _chain(error):
        code = getattr(part, "sqlstate", None) or getattr(part, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def is_poison(error: BaseException) -> bool:
    """True when ``error`` says the record's content is refused, so a retry fails the same way."""
    chain = _chain(error)
    if any(isinstance(part, MessageSizeTooLargeError | RecordTooLargeError) for part in chain):
        return True
    if any(isinstance(part, OSError | TimeoutError | KafkaError) for part in chain):
        return False
    code = sqlstate(error)
    if code is not None:
        return code[:2] in POISON_SQLSTATE_CLASSES
    return any(isinstance(part, ValidationError | ValueError) for part in chain)
