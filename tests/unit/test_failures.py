"""Which failures make a consumer dead-letter a record, and which make it wait."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, RequestTimedOutError
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc

from shared.failures import is_poison, sqlstate


class Shape(BaseModel):
    n: int


def validation_error() -> ValidationError:
    try:
        Shape.model_validate({"n": "many"})
    except ValidationError as error:
        return error
    raise AssertionError("validation passed")


def wrapped(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


def sqlalchemy_of(inner: Exception) -> exc.DBAPIError:
    return exc.DBAPIError.instance("INSERT ...", {}, inner, Exception)


@pytest.mark.parametrize(
    "error",
    [
        validation_error(),
        ValueError("amount is not a number"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.CheckViolationError("violates check constraint"),
        asyncpg.StringDataRightTruncationError("value too long for type character varying(36)"),
        sqlalchemy_of(asyncpg.NotNullViolationError("null value in column")),
        MessageSizeTooLargeError(),
        wrapped(RuntimeError("handler failed"), ValueError("bad field")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_about_the_record_are_poison(error: Exception) -> None:
    assert is_poison(error)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "connect refused"),
        TimeoutError(),
        KafkaConnectionError(),
        RequestTimedOutError(),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.AdminShutdownError("terminating connection"),
        asyncpg.UndefinedTableError('relation "identity.links" does not exist'),
        asyncpg.InterfaceError("connection is closed"),
        sqlalchemy_of(asyncpg.SerializationError("could not serialize access")),
        RuntimeError("a bug, not the record"),
        KeyError("tier"),
        wrapped(ConnectionResetError(), ValueError("seen while the connection dropped")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_outages_conflicts_and_unknown_failures_are_retried(error: Exception) -> None:
    assert not is_poison(error)


def test_the_sqlstate_is_found_through_sqlalchemy_and_causes() -> None:
    inner = asyncpg.UniqueViolationError("duplicate key")
    assert sqlstate(sqlalchemy_of(inner)) == "23505"
    assert sqlstate(wrapped(RuntimeError("outer"), inner)) == "23505"
    assert sqlstate(RuntimeError("no database here")) is None


def test_context_alone_does_not_make_an_outage_poison() -> None:
    def drop_while_handling() -> None:
        try:
            raise ValueError("handled earlier")
        except ValueError:
            raise ConnectionResetError("the database went away")  # noqa: B904

    with pytest.raises(ConnectionResetError) as caught:
        drop_while_handling()
    assert isinstance(caught.value.__context__, ValueError)
    assert not is_poison(caught.value)
