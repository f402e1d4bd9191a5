"""``python -m coordinator.devstack``: fetch the Kafka jars, or run Kafka + PostgreSQL by hand.

python -m coordinator.devstack fetch-kafka
python -m coordinator.devstack up [--kafka apache|embedded|...] [--postgres embedded|...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from coordinator.devstack.apache_kafka import (
    KAFKA_VERSION,
    KafkaDistribution,
    default_kafka_cache_dir,
)
from coordinator.devstack.errors import DevStackError
from coordinator.devstack.kafka import KAFKA_KINDS
from coordinator.devstack.postgres import POSTGRES_KINDS
from coordinator.devstack.selection import (
    KAFKA_BOOTSTRAP_ENV,
    KAFKA_KIND_ENV,
    POSTGRES_KIND_ENV,
    POSTGRES_URL_ENV,
)
from coordinator.devstack.stack import DevStack


def _fetch_kafka(args: argparse.Namespace) -> int:
    distribution = KafkaDistribution(
        default_kafka_cache_dir(os.environ, args.version), args.version
    )
    state = "fetched" if distribution.fetch() else "already cached"
    print(f"Apache Kafka {distribution.version} {state} in {distribution.libs_dir}")
    return 0


async def _up(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.kafka:
        env[KAFKA_KIND_ENV] = args.kafka
    if args.postgres:
        env[POSTGRES_KIND_ENV] = args.postgres
    stack = DevStack.from_env(env, num_partitions=args.partitions, fsync=args.fsync)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with stack:
        kafka, postgres = stack.kafka, stack.postgres
        print(f"kafka:    {kafka.kind} {kafka.version} at {kafka.bootstrap_servers}")
        print(f"postgres: {postgres.kind} {postgres.version} at {postgres.url}")
        print(f"export {KAFKA_BOOTSTRAP_ENV}={kafka.bootstrap_servers}")
        print(f"export {POSTGRES_URL_ENV}={postgres.url}")
        print("running; Ctrl-C to stop", flush=True)
        await stopping.wait()
        print("stopping", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch-kafka", help="download the Apache Kafka jars once")
    fetch.add_argument("--version", default=KAFKA_VERSION)
    up = commands.add_parser("up", help="run Kafka + PostgreSQL until Ctrl-C / SIGTERM")
    up.add_argument("--kafka", choices=KAFKA_KINDS, help=f"default: ${KAFKA_KIND_ENV} or auto")
    up.add_argument(
        "--postgres", choices=POSTGRES_KINDS, help=f"default: ${POSTGRES_KIND_ENV} or auto"
    )
    up.add_argument("--partitions", type=int, default=4, help="default partitions per topic")
    up.add_argument("--fsync", action="store_true", help="keep PostgreSQL's fsync on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fetch-kafka":
            return _fetch_kafka(args)
        return asyncio.run(_up(args))
    except DevStackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
