#!/usr/bin/env python3
"""Deletes the queues and exchanges tests declared (names starting with `t-`).

Every test declares its own topology under a unique prefix so tests can run in parallel.
Left behind, they pile up run after run: hundreds of quorum queues make the broker slow to
start, and we have seen a RabbitMQ 3.10 node hang while recovering them. `just test` runs
this before and after the tests. Names come from one `rabbitmqctl list_*` call each; the
deletes go over AMQP, which is fast.
"""

import subprocess
import sys

import pika

PREFIX = "t-"


def names(kind: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        print(f"clean-test-topology: cannot list {kind}: {out.stderr.strip()}", file=sys.stderr)
        return []
    return [n.strip() for n in out.stdout.splitlines() if n.strip().startswith(PREFIX)]


def main() -> int:
    queues, exchanges = names("queues"), names("exchanges")
    if not queues and not exchanges:
        return 0
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", 5672, socket_timeout=10, blocked_connection_timeout=30)
    )
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue=queue)
    for exchange in exchanges:
        channel.exchange_delete(exchange=exchange)
    connection.close()
    print(f"clean-test-topology: deleted {len(queues)} queues and {len(exchanges)} exchanges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
