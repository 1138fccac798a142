"""Twisted's ESMTP client as a peer sender for bench/run.

Every session is an ESMTPSenderFactory connection. For sessions that carry
more than one message, the factory's protocol is an ESMTPSender subclass
whose getMailFrom, getMailTo, getMailData and sentMail callbacks hand out
messages until a shared budget is spent, as the SMTPClient callback model
allows. Twisted sends RSET after each message, as it always does.

Prints one JSON line, {"sent": N, "failed": N, "seconds": S}, where seconds
covers the SMTP traffic only. The modes match smtplib_driver.py.
"""

import argparse
import io
import json
import socket
import sys
import time

# twisted.mail.smtp computes its default EHLO name with socket.getfqdn() at
# import time. Every factory here sets its own name, so the lookup is
# replaced to keep the benchmark from asking any resolver about this host.
socket.getfqdn = lambda name="": "bench.test"

from twisted.internet import defer, reactor  # noqa: E402
from twisted.mail import smtp  # noqa: E402

SENDER = "bench@bench.test"
RECIPIENT = "sink@bench.test"
HELO_NAME = "bench.test"


class Budget:
    """The messages left to send, shared by the sessions of one run."""

    def __init__(self, count):
        self.remaining = count
        self.sent = 0
        self.failed = 0


class MultiSender(smtp.ESMTPSender):
    """An ESMTPSender that sends messages while its factory's budget lasts."""

    def getMailFrom(self):
        budget = self.factory.budget
        if budget.remaining == 0:
            return None
        budget.remaining -= 1
        return SENDER

    def getMailTo(self):
        return self.factory.toEmail

    def getMailData(self):
        return io.BytesIO(self.factory.content)

    def sentMail(self, code, resp, numOk, addresses, log):
        if code in smtp.SUCCESS and numOk == len(addresses):
            self.factory.budget.sent += 1
        else:
            self.factory.budget.failed += 1
            print(f"twisted_driver: rejected: {code} {resp!r}", file=sys.stderr)

    def sendError(self, exc):
        self.factory.budget.failed += 1
        print(f"twisted_driver: session failed: {exc}", file=sys.stderr)
        smtp.SMTPClient.sendError(self, exc)


class MultiSenderFactory(smtp.ESMTPSenderFactory):
    """An ESMTPSenderFactory whose deferred fires when the session ends."""

    protocol = MultiSender

    def __init__(self, budget, content, recipients, done):
        super().__init__(
            None,
            None,
            SENDER,
            recipients,
            None,
            defer.Deferred(),
            retries=0,
            requireAuthentication=False,
            requireTransportSecurity=False,
        )
        self.domain = HELO_NAME
        self.budget = budget
        self.content = content
        self.done = done

    def clientConnectionLost(self, connector, reason):
        if not self.done.called:
            self.done.callback(None)

    def clientConnectionFailed(self, connector, reason):
        print(f"twisted_driver: connection failed: {reason.value}", file=sys.stderr)
        if not self.done.called:
            self.done.callback(None)


def send_session(host, port, budget, content, recipients):
    """Open one session that sends while the budget lasts; fires at its end."""
    done = defer.Deferred()
    factory = MultiSenderFactory(budget, content, recipients, done)
    reactor.connectTCP(host, port, factory)
    return done


def send_one(host, port, recipients, message_file):
    """Send one message with a plain ESMTPSenderFactory, as Twisted documents it."""
    result = defer.Deferred()
    factory = smtp.ESMTPSenderFactory(
        None,
        None,
        SENDER,
        recipients,
        message_file,
        result,
        retries=0,
        requireAuthentication=False,
        requireTransportSecurity=False,
    )
    factory.domain = HELO_NAME
    reactor.connectTCP(host, port, factory)
    return result


def split_server(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


@defer.inlineCallbacks
def run(args, outcome):
    started = time.perf_counter()
    if args.mode == "connection":
        host, port = split_server(args.server)
        with open(args.message, "rb") as message_file:
            content = message_file.read()
        budget = Budget(args.count)
        yield defer.gatherResults(
            [send_session(host, port, budget, content, [RECIPIENT]) for _ in range(args.connections)]
        )
        outcome.update(sent=budget.sent, failed=budget.failed)
    elif args.mode == "recipients":
        host, port = split_server(args.server)
        with open(args.message, "rb") as message_file:
            content = message_file.read()
        recipients = [f"{i}sink@bench.test" for i in range(args.recipients)]
        for _ in range(args.count):
            try:
                accepted, _ = yield send_one(host, port, recipients, io.BytesIO(content))
                outcome["sent" if accepted == len(recipients) else "failed"] += 1
            except smtp.SMTPClientError as error:
                print(f"twisted_driver: {error}", file=sys.stderr)
                outcome["failed"] += 1
    elif args.mode == "file":
        host, port = split_server(args.server)
        # The file is streamed through Twisted's FileSender producer.
        with open(args.message, "rb") as message_file:
            yield send_one(host, port, [RECIPIENT], message_file)
        outcome["sent"] += 1
    else:
        yield run_mx(args, outcome)
    outcome["seconds"] = round(time.perf_counter() - started, 6)


@defer.inlineCallbacks
def run_mx(args, outcome):
    from twisted.mail.relaymanager import MXCalculator
    from twisted.names import client

    ns_host, ns_port = split_server(args.nameserver)
    resolver = client.createResolver(servers=[(ns_host, ns_port)], resolvconf=None, hosts=None)
    calculator = MXCalculator(resolver=resolver)
    with open(args.message, "rb") as message_file:
        content = message_file.read()

    counts = {}
    for i in range(args.count):
        domain = f"d{i % args.domains:04d}.bench.test"
        counts[domain] = counts.get(domain, 0) + 1

    for domain, count in counts.items():
        mx = yield calculator.getMX(domain)
        address = yield resolver.getHostByName(str(mx.name))
        budget = Budget(count)
        yield send_session(address, args.port, budget, content, [f"user@{domain}"])
        outcome["sent"] += budget.sent
        outcome["failed"] += budget.failed + budget.remaining


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

    outcome = {"sent": 0, "failed": 0, "seconds": 0.0}
    errors = []

    def finish(result):
        if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
            errors.append(result)
        reactor.stop()

    reactor.callWhenRunning(lambda: run(args, outcome).addBoth(finish))
    reactor.run()
    for error in errors:
        print(f"twisted_driver: run failed: {error}", file=sys.stderr)
        outcome["failed"] += 1
    print(json.dumps(outcome))
    return 0 if outcome["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
