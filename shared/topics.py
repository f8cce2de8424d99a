"""``python -m shared.topics`` creates every marketplace topic with its partition count."""

from __future__ import annotations

import argparse
import asyncio

from shared.contracts.registry import ALL_TOPICS
from shared.kafka import KafkaSettings, ensure_topics, topic_specs
from shared.settings import load_settings


def main() -> None:
    # MARKETPLACE_KAFKA_*: the same broker and login as the services.
    kafka = load_settings(KafkaSettings, "marketplace")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default=kafka.kafka_bootstrap)
    args = parser.parse_args()
    asyncio.run(ensure_topics(args.bootstrap, topic_specs(ALL_TOPICS), kafka.kafka_security()))
    for topic in ALL_TOPICS:
        kind = "compacted" if topic.compacted else "delete"
        print(f"{topic.name}: {topic.partitions} partitions, {kind}, key {topic.key_description}")


if __name__ == "__main__":
    main()
