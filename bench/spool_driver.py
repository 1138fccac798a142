#!/usr/bin/env python3
"""W6 driver: messages through mxsend's durable spool, end to end.

    spool_driver.py --cli PATH --port PORT --message FILE --count N

It writes a configuration in a temporary folder that relays to
127.0.0.1:PORT without TLS and keeps the spool in that folder. It stores N
messages with `mxsend sendmail -odq`, one process each, as cron or PHP
would, and then delivers them all with `mxsend sendmail -q`. It prints one
JSON line with the count sent and the seconds each phase took, and exits
non-zero when a submission fails or a message is left in the queue.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", required=True, help="path of the mxsend binary")
    parser.add_argument("--port", type=int, required=True, help="port of the sink on 127.0.0.1")
    parser.add_argument("--message", required=True, help="message file to send")
    parser.add_argument("--count", type=int, required=True, help="number of messages")
    args = parser.parse_args()

    with open(args.message, "rb") as handle:
        content = handle.read()

    with tempfile.TemporaryDirectory(prefix="mxsend-w6-") as folder:
        config = os.path.join(folder, "config.toml")
        with open(config, "w", encoding="ascii") as handle:
            handle.write(
                "[identity]\n"
                'ehlo_name = "bench.test"\n'
                "[delivery]\n"
                f'relay = "127.0.0.1:{args.port}"\n'
                'tls = "none"\n'
                "[spool]\n"
                f'path = "{os.path.join(folder, "spool")}"\n'
                "[daemon]\n"
                "concurrency = 4\n"
                "per_destination = 4\n"
            )
        environment = dict(os.environ, MXSEND_CONFIG=config)
        command = [args.cli, "sendmail", "-odq", "-f", "sender@bench.test", "rcpt@bench.test"]

        started = time.monotonic()
        for number in range(args.count):
            stored = subprocess.run(command, input=content, env=environment, capture_output=True)
            if stored.returncode != 0:
                sys.exit(f"submission {number + 1} failed: {stored.stderr.decode(errors='replace')}")
        enqueued = time.monotonic()

        flush = subprocess.run(
            [args.cli, "sendmail", "-q"], env=environment, capture_output=True
        )
        delivered = time.monotonic()
        if flush.returncode != 0:
            sys.exit(f"queue run failed: {flush.stderr.decode(errors='replace')}")

        listing = subprocess.run(
            [args.cli, "queue", "list", "--json"], env=environment, capture_output=True, text=True
        )
        waiting = listing.stdout.count('"queued"') + listing.stdout.count('"deferred"')
        if listing.returncode != 0 or waiting:
            sys.exit(f"{waiting} recipients still waiting after the queue run: {listing.stderr}")

    print(json.dumps({
        "sent": args.count,
        "enqueue_seconds": enqueued - started,
        "deliver_seconds": delivered - enqueued,
    }))


if __name__ == "__main__":
    main()
