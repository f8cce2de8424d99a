"""``python -m deploy.demo``: play a co-sell day against the running marketplace (``make demo``).

Start the marketplace first (``make run``).  To see acceptance deadlines fire
during the day, start it with a short deadline:
``ORDERS_ACCEPTANCE_DEADLINE_SECONDS=20 make run``; with the default (48 h)
the orders whose partner never answers are reported as still pending.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from deploy.demo.client import Refused, ServiceDown
from deploy.demo.day import DemoStopped, Options, play
from deploy.demo.summary import render

STATE = Path(__file__).resolve().parent.parent / "local" / "state"


def _operator_token(path: Path | None) -> str:
    """The flag's file, else $OPERATOR_TOKEN, else the token ``make run`` wrote."""
    if path is None:
        from_env = os.environ.get("OPERATOR_TOKEN") or os.environ.get("MARKETPLACE_OPERATOR_TOKEN")
        if from_env:
            return from_env.strip()
        path = STATE / "keys" / "operator_token"
    try:
        return path.read_text().strip()
    except OSError:
        raise DemoStopped(
            f"no operator token at {path}: start the marketplace with `make run` first"
        ) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make demo ARGS=...",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--customers", type=_positive, default=25)
    parser.add_argument("--orders", type=_positive, default=150)
    parser.add_argument("--concurrency", type=_positive, default=12, help="orders in flight")
    parser.add_argument("--seed", type=int, default=7, help="the same seed plays the same day")
    parser.add_argument(
        "--deadline-wait",
        type=float,
        default=30.0,
        help="wait this long for acceptance deadlines to fire; later ones stay pending",
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=30.0, help="how long to wait for orders to settle"
    )
    parser.add_argument("--catalog-url", default="http://127.0.0.1:8081")
    parser.add_argument("--orders-url", default="http://127.0.0.1:8082")
    parser.add_argument("--settlement-url", default="http://127.0.0.1:8083")
    parser.add_argument(
        "--kafka", default=os.environ.get("MARKETPLACE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("--topic-prefix", default=os.environ.get("MARKETPLACE_TOPIC_PREFIX", ""))
    parser.add_argument(
        "--operator-token-file",
        type=Path,
        default=None,
        help=f"default: $OPERATOR_TOKEN, else {STATE}/keys/operator_token",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # The demo reports an unreachable broker itself, in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        options = Options(
            urls={
                "catalog": args.catalog_url.rstrip("/"),
                "orders": args.orders_url.rstrip("/"),
                "settlement": args.settlement_url.rstrip("/"),
            },
            kafka=args.kafka,
            topic_prefix=args.topic_prefix,
            operator_token=_operator_token(args.operator_token_file),
            customers=args.customers,
            orders=args.orders,
            concurrency=args.concurrency,
            seed=args.seed,
            deadline_wait=args.deadline_wait,
            settle_timeout=args.settle_timeout,
        )
        summary = asyncio.run(play(options, say))
    except (DemoStopped, ServiceDown) as stopped:
        print(f"demo stopped: {stopped}", file=sys.stderr)
        return 1
    except Refused as refusal:
        hint = " (is this the running marketplace's operator token?)" * (refusal.status == 401)
        print(f"demo stopped: {refusal}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print()
    print(render(summary))
    books_agree = (
        summary.trial_balance is not None
        and summary.trial_balance.balanced
        and summary.three_way is not None
        and summary.three_way.checked == summary.three_way.agreeing
    )
    return 0 if books_agree else 3


if __name__ == "__main__":
    raise SystemExit(main())
