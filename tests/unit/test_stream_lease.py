"""The stream consumer's lease against a key-value store's race (no broker needed: the
race is nats-py's, reproduced by a store that answers as it does)."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.unit


class ExpiringKV:
    """Answers ``create`` the way nats-py's KeyValue does when the key it found taken
    expires before it reads it back (its create publishes, is told the key exists, reads
    the key, finds nothing): KeyNotFoundError; then, the key gone, the create succeeds."""

    def __init__(self) -> None:
        self.creates = 0
        self.raced = 0

    async def create(self, key: str, value: bytes) -> int:
        from nats.js.errors import KeyNotFoundError

        self.creates += 1
        if self.creates == 1:
            self.raced += 1
            raise KeyNotFoundError
        return 42


def test_a_lease_that_expires_while_it_is_taken_is_taken_on_the_next_try():
    """A killed consumer's lease expiring while the next consumer takes it failed the
    next consumer ("opening the consumer ... failed: nats: key not found", seen once in
    CI's killed-consumer test); it is an expired lease, and the next try takes it."""
    from riverlake.sources.stream import Lease

    kv = ExpiringKV()
    lease = Lease(js=None, key="source-consumer-x")

    async def bucket():
        return kv

    lease._bucket = bucket

    async def take():
        holder = await lease.acquire(wait_s=5)
        lease._keeper.cancel()
        return holder

    assert asyncio.run(take()) is None  # taken, nobody else holds it
    assert kv.raced == 1 and kv.creates == 2 and lease.rev == 42
