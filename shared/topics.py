"""``python -m shared.topics`` creates every marketplace topic with its partition count."""

from __future__ import annotations

import argparse
import asyncio
import os

from shared.contracts.registry import ALL_TOPICS
from shared.kafka import ensure_topics, topic_specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("MARKETPLACE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
    )
    args = parser.parse_args()
    asyncio.run(ensure_topics(args.bootstrap, topic_specs(ALL_TOPICS)))
    for topic in ALL_TOPICS:
        kind = "compacted" if topic.compacted else "delete"
        print(f"{topic.name}: {topic.partitions} partitions, {kind}, key {topic.key_description}")


if __name__ == "__main__":
    main()
