"""Pause state: what a generation checks before its SD call, in both key-value stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pipeline.jobs.control import QueueControl
from pipeline.store.keyvalue import KeyValue, RedisKeyValue, SqliteKeyValue


@pytest.fixture(params=["redis", "sqlite"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValue]:
    made: KeyValue
    if request.param == "redis":
        made = RedisKeyValue(redis.Redis.from_url(request.getfixturevalue("redis_url")))
    else:
        made = SqliteKeyValue(tmp_path / "status.sqlite3")
    yield made
    made.close()


def test_control_is_paused_for_a_paused_batch_only(kv: KeyValue) -> None:
    control = QueueControl(kv)
    control.pause("batch-a")

    assert control.is_paused("batch-a")
    assert not control.is_paused("batch-b")
    assert not control.is_paused(None)


def test_control_is_paused_for_every_batch_while_the_queue_is(kv: KeyValue) -> None:
    control = QueueControl(kv)
    control.pause()

    assert control.is_paused("batch-b")
    assert control.is_paused(None)
    control.resume()
    assert not control.is_paused("batch-b")


def test_keyvalue_get_with_member_reads_the_value_and_the_membership(kv: KeyValue) -> None:
    kv.put("flag", "1")
    kv.add_member("set", "here")

    assert kv.get_with_member("flag", "set", "here") == ("1", True)
    assert kv.get_with_member("other", "set", "gone") == (None, False)
