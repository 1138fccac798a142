"""Python smtplib as a peer sender for bench/run.

Prints one JSON line, {"sent": N, "failed": N, "seconds": S}, where
seconds covers the SMTP traffic only. Modes:

  connection  --count copies of one message over --connections sessions
              (one thread per session), W1 and W2
  recipients  --count sessions, each sending one message to --recipients
              recipients, W3
  file        one message read from --message, W4
  mx          --count messages to --domains domains, found through MX
              lookups (dnspython) at --nameserver; one session per domain
              carries all of that domain's messages, W5
"""

import argparse
import json
import smtplib
import sys
import threading
import time

SENDER = "bench@bench.test"
RECIPIENT = "sink@bench.test"
HELO_NAME = "bench.test"


def split_server(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def send_copies(server, content, budget, lock, totals):
    """Send copies of content over one session until the shared budget is spent."""
    host, port = server
    sent = failed = 0
    with smtplib.SMTP(host, port, local_hostname=HELO_NAME) as session:
        while True:
            with lock:
                if budget[0] == 0:
                    break
                budget[0] -= 1
            try:
                session.sendmail(SENDER, [RECIPIENT], content)
                sent += 1
            except smtplib.SMTPException as error:
                print(f"smtplib_driver: send failed: {error}", file=sys.stderr)
                failed += 1
    with lock:
        totals[0] += sent
        totals[1] += failed


def run_connection(args, content):
    server = split_server(args.server)
    budget = [args.count]
    totals = [0, 0]
    lock = threading.Lock()
    started = time.perf_counter()
    threads = [
        threading.Thread(target=send_copies, args=(server, content, budget, lock, totals))
        for _ in range(args.connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return totals[0], totals[1], time.perf_counter() - started


def run_recipients(args, content):
    host, port = split_server(args.server)
    recipients = [f"{i}sink@bench.test" for i in range(args.recipients)]
    sent = failed = 0
    started = time.perf_counter()
    for _ in range(args.count):
        with smtplib.SMTP(host, port, local_hostname=HELO_NAME) as session:
            refused = session.sendmail(SENDER, recipients, content)
            if refused:
                failed += 1
            else:
                sent += 1
    return sent, failed, time.perf_counter() - started


def run_file(args):
    host, port = split_server(args.server)
    started = time.perf_counter()
    # smtplib.sendmail takes the whole message as one bytes object.
    with open(args.message, "rb") as message_file:
        content = message_file.read()
    with smtplib.SMTP(host, port, local_hostname=HELO_NAME) as session:
        session.sendmail(SENDER, [RECIPIENT], content)
    return 1, 0, time.perf_counter() - started


def run_mx(args, content):
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    ns_host, ns_port = split_server(args.nameserver)
    resolver.nameservers = [ns_host]
    resolver.port = ns_port
    smtp_port = args.port

    by_domain = {}
    for i in range(args.count):
        domain = f"d{i % args.domains:04d}.bench.test"
        by_domain.setdefault(domain, []).append(f"user{i}@{domain}")

    sent = failed = 0
    started = time.perf_counter()
    for domain, recipients in by_domain.items():
        answer = resolver.resolve(domain, "MX")
        exchanger = min(answer, key=lambda record: record.preference).exchange
        address = resolver.resolve(exchanger, "A")[0].address
        with smtplib.SMTP(address, smtp_port, local_hostname=HELO_NAME) as session:
            for recipient in recipients:
                try:
                    session.sendmail(SENDER, [recipient], content)
                    sent += 1
                except smtplib.SMTPException as error:
                    print(f"smtplib_driver: {recipient}: {error}", file=sys.stderr)
                    failed += 1
    return sent, failed, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["connection", "recipients", "file", "mx"])
    parser.add_argument("--server", help="SMTP server as IP:port")
    parser.add_argument("--message", required=True, help="message file with CRLF line ends")
    parser.add_argument("--count", type=int, default=1, help="messages to send")
    parser.add_argument("--connections", type=int, default=1, help="parallel sessions")
    parser.add_argument("--recipients", type=int, default=1, help="recipients per message")
    parser.add_argument("--nameserver", help="DNS server as IP:port (mx mode)")
    parser.add_argument("--port", type=int, help="SMTP port of the exchangers (mx mode)")
    parser.add_argument("--domains", type=int, default=1, help="destination domains (mx mode)")
    args = parser.parse_args()

    if args.mode == "file":
        sent, failed, seconds = run_file(args)
    else:
        with open(args.message, "rb") as message_file:
            content = message_file.read()
        if args.mode == "connection":
            sent, failed, seconds = run_connection(args, content)
        elif args.mode == "recipients":
            sent, failed, seconds = run_recipients(args, content)
        else:
            sent, failed, seconds = run_mx(args, content)
    print(json.dumps({"sent": sent, "failed": failed, "seconds": round(seconds, 6)}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
