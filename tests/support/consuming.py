"""Helpers for consumer tests: Ping messages, their effects, dead letters, catching up."""

from __future__ import annotations

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from shared import db
from shared.contracts.envelope import Envelope, encode_envelope, new_envelope
from tests.support.events import TEST_PRODUCER, Ping
from tests.support.infra import Infra
from tests.support.kafka import TopicReader, group_caught_up, produce
from tests.support.waiting import wait_for


def ping_message(n: int, key: str, sequence: int | None = None) -> tuple[bytes, bytes, Envelope]:
    envelope = new_envelope(Ping(n=n), key=key, producer=TEST_PRODUCER, sequence=sequence)
    return key.encode(), encode_envelope(envelope), envelope


async def produce_pings(infra: Infra, topic: str, numbers: range, keys: int) -> list[Envelope]:
    made = [ping_message(n, f"key-{n % keys}") for n in numbers]
    await produce(infra.kafka_bootstrap, topic, [(key, value) for key, value, _ in made])
    return [envelope for _, _, envelope in made]


async def count_effects(pool: db.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM effects")
    return count


async def caught_up(infra: Infra, name: str, topic: str, within: float = 20) -> None:
    await wait_for(
        lambda: group_caught_up(infra.kafka_bootstrap, name, topic),
        timeout=within,
        interval=0.1,
        ignore=(KafkaError,),
        message="the consumer did not get through the topic",
    )


async def dead_letters(infra: Infra, topic: str, expected: int) -> list[ConsumerRecord]:
    async with TopicReader(infra.kafka_bootstrap, f"{topic}.dlq") as reader:

        async def all_there() -> bool:
            return len(await reader.poll()) >= expected

        await wait_for(all_there, message=f"fewer than {expected} dead letters")
        return list(reader.records)


def headers_of(record: object) -> dict[str, str]:
    return {key: bytes(value).decode() for key, value in getattr(record, "headers", ())}
