"""Run the mxsend benchmark workloads against smtp-sink and report them.

bench/run installs the peers, builds the drivers and then runs this file
with the virtualenv's Python. Each repetition runs every workload once with
every sender, in a rotated sender order, against one smtp-sink on
127.0.0.1. Throughput is messages divided by the wall-clock time of the
sender's process, so start-up is included for every sender alike. Peak RSS
is the maximum resident set size that /usr/bin/time -v reports.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TARGET = BENCH / "target"
DRIVER = TARGET / "release" / "mxsend-bench"
CLI = TARGET / "cli" / "release" / "mxsend"
PYTHON = sys.executable
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

SENDER = "bench@bench.test"
RECIPIENT = "sink@bench.test"
SENDERS = ["mxsend", "smtp-source", "smtplib", "lettre", "twisted"]
# lettre and Twisted stall about 40 ms per message on loopback (Nagle's
# algorithm against delayed ACK), so they send fewer messages per run.
SLOW_SENDERS = {"lettre", "twisted"}
MESSAGE_SIZE = 2048
RUN_TIMEOUT = 1800


@dataclass
class Settings:
    """Sizes of one benchmark mode."""

    repetitions: int
    messages: int
    slow_messages: int
    recipients: int
    recipient_messages: int
    big_size: int
    mx_messages: int
    mx_domains: int
    slow_mx_messages: int
    slow_mx_domains: int
    spool_messages: int


FULL = Settings(
    repetitions=5,
    messages=20_000,
    slow_messages=500,
    recipients=1_000,
    recipient_messages=20,
    big_size=1 << 30,
    mx_messages=10_000,
    mx_domains=1_000,
    slow_mx_messages=500,
    slow_mx_domains=50,
    spool_messages=10_000,
)

QUICK = Settings(
    repetitions=3,
    messages=2_000,
    slow_messages=100,
    recipients=1_000,
    recipient_messages=5,
    big_size=64 << 20,
    mx_messages=2_000,
    mx_domains=200,
    slow_mx_messages=100,
    slow_mx_domains=10,
    spool_messages=2_000,
)


@dataclass
class Workload:
    """One column group of the table: what is sent and how it is counted."""

    key: str
    title: str
    messages: int
    unit_note: str = ""


@dataclass
class Cell:
    """The runs of one sender on one workload, or why it did not run."""

    messages: int = 0
    runs: list = field(default_factory=list)
    skipped: str = ""
    error: str = ""
    command: str = ""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, process, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"smtp-sink exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"smtp-sink did not listen on 127.0.0.1:{port} within {timeout} s")


def write_message(path, size, line_end):
    """Write a message of `size` bytes (counted with CRLF line ends)."""
    header = [
        "From: Bench <bench@bench.test>",
        "To: Sink <sink@bench.test>",
        "Subject: mxsend benchmark message",
        "Message-ID: <bench-message@bench.test>",
        "",
    ]
    head = "".join(line + "\r\n" for line in header)
    line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n"
    body_size = size - len(head)
    whole, rest = divmod(body_size, len(line))
    tail = ("x" * (rest - 2) + "\r\n") if rest >= 3 else ""
    block_lines = 4096
    with open(path, "w", newline="") as out:
        out.write(head.replace("\r\n", line_end))
        block = (line * block_lines).replace("\r\n", line_end)
        for _ in range(whole // block_lines):
            out.write(block)
        out.write((line * (whole % block_lines)).replace("\r\n", line_end))
        out.write(tail.replace("\r\n", line_end))


def message_files(work, name, size):
    """Return (CRLF file, LF file) for one message size, writing them once.

    smtp-source -F appends CRLF to each line it reads, so it gets the LF
    copy. Both give the same bytes on the wire.
    """
    crlf = work / f"{name}.eml"
    lf = work / f"{name}.lf"
    for path, line_end in ((crlf, "\r\n"), (lf, "\n")):
        if not path.exists() or path.stat().st_size == 0:
            write_message(path, size, line_end)
    return crlf, lf


def parse_time_v(path):
    """Peak RSS (KiB) and CPU seconds from a /usr/bin/time -v report."""
    text = Path(path).read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    return (
        int(rss.group(1)) if rss else None,
        (float(user.group(1)) if user else 0.0) + (float(system.group(1)) if system else 0.0),
    )


def run_measured(command, expected):
    """Run one sender process under /usr/bin/time -v and measure it."""
    with tempfile.NamedTemporaryFile(prefix="bench-time-", suffix=".txt", delete=False) as report:
        report_path = report.name
    try:
        started = time.perf_counter()
        result = subprocess.run(
            ["/usr/bin/time", "-v", "-o", report_path, *command],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        rss_kib, cpu = parse_time_v(report_path)
    finally:
        os.unlink(report_path)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit status {result.returncode}: {tail}")
    reported = None
    lines = result.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        reported = json.loads(lines[-1])
        if reported["sent"] != expected:
            raise RuntimeError(f"sent {reported['sent']} of {expected} messages")
    return {"wall": wall, "rss_kib": rss_kib, "cpu": cpu, "driver": reported}


class Bench:
    def __init__(self, args, settings):
        self.args = args
        self.settings = settings
        self.work = TARGET / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.sink = None
        self.zones = {}
        self.port = None

    # -- servers -------------------------------------------------------

    def start_sink(self):
        self.port = free_port()
        # -u is required when smtp-sink starts as root. smtp-sink announces
        # PIPELINING unless given -p.
        command = [SMTP_SINK, "-u", "nobody", f"127.0.0.1:{self.port}", "1024"]
        if os.geteuid() != 0:
            command = [SMTP_SINK, f"127.0.0.1:{self.port}", "1024"]
        self.sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, self.sink)

    def zone(self, domains):
        """Start (once) a loopback DNS zone with `domains` domains."""
        if domains not in self.zones:
            process = subprocess.Popen(
                [str(DRIVER), "dns-zone", "--domains", str(domains)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            line = process.stdout.readline().strip()
            if not line.startswith("port "):
                process.kill()
                raise RuntimeError(f"the DNS zone server did not start: {line!r}")
            self.zones[domains] = (process, f"127.0.0.1:{line.split()[1]}")
        return self.zones[domains][1]

    def stop_servers(self):
        for process, _ in self.zones.values():
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.zones.clear()
        if self.sink is not None and self.sink.poll() is None:
            self.sink.send_signal(signal.SIGTERM)
            try:
                self.sink.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sink.kill()

    # -- workloads -----------------------------------------------------

    def workloads(self):
        s = self.settings
        big_mib = s.big_size >> 20
        return [
            Workload("W1", f"{s.messages} x 2 KB, 1 recipient, 1 connection", s.messages),
            Workload("W2/4", f"{s.messages} x 2 KB over 4 connections", s.messages),
            Workload("W2/16", f"{s.messages} x 2 KB over 16 connections", s.messages),
            Workload(
                "W3",
                f"{s.recipient_messages} x (1 message to {s.recipients} recipients), "
                "a new connection each",
                s.recipient_messages,
            ),
            Workload("W4", f"1 message of {big_mib} MiB", 1),
            Workload(
                "W5",
                f"{s.mx_messages} x 2 KB to {s.mx_domains} domains through MX lookups",
                s.mx_messages,
            ),
            Workload("W6", f"{s.spool_messages} x 2 KB through the spool", s.spool_messages),
        ]

    def command(self, workload, sender):
        """Return (command, messages) or raise Skip with the reason."""
        s = self.settings
        server = f"127.0.0.1:{self.port}"
        small, small_lf = message_files(self.work, "message-2k", MESSAGE_SIZE)
        source_base = [SMTP_SOURCE, "-f", SENDER, "-t", RECIPIENT, "-M", "bench.test"]
        count = s.slow_messages if sender in SLOW_SENDERS else s.messages
        key = workload.key

        if key in ("W1", "W2/4", "W2/16"):
            connections = {"W1": 1, "W2/4": 4, "W2/16": 16}[key]
            if sender == "mxsend":
                return [str(DRIVER), "mxsend-connection", "--server", server, "--message",
                        str(small), "--count", str(count), "--connections", str(connections)], count
            if sender == "smtp-source":
                return [*source_base, "-d", "-s", str(connections), "-m", str(count), "-F",
                        str(small_lf), server], count
            if sender == "lettre":
                return [str(DRIVER), "lettre", "--server", server, "--message", str(small),
                        "--count", str(count), "--connections", str(connections)], count
            driver = "smtplib_driver.py" if sender == "smtplib" else "twisted_driver.py"
            return [PYTHON, str(BENCH / driver), "connection", "--server", server, "--message",
                    str(small), "--count", str(count), "--connections", str(connections)], count

        if key == "W3":
            count, recipients = s.recipient_messages, str(s.recipients)
            if sender == "mxsend":
                return [str(DRIVER), "mxsend-delivery", "--server", server, "--message",
                        str(small), "--recipients", recipients, "--count", str(count)], count
            if sender == "smtp-source":
                return [*source_base, "-r", recipients, "-m", str(count), "-F", str(small_lf),
                        server], count
            if sender == "lettre":
                return [str(DRIVER), "lettre", "--server", server, "--message", str(small),
                        "--recipients", recipients, "--count", str(count)], count
            driver = "smtplib_driver.py" if sender == "smtplib" else "twisted_driver.py"
            return [PYTHON, str(BENCH / driver), "recipients", "--server", server, "--message",
                    str(small), "--recipients", recipients, "--count", str(count)], count

        if key == "W4":
            big, big_lf = message_files(self.work, f"message-{s.big_size >> 20}m", s.big_size)
            if sender == "mxsend":
                return [str(DRIVER), "mxsend-file", "--server", server, "--message", str(big)], 1
            if sender == "smtp-source":
                return [*source_base, "-m", "1", "-F", str(big_lf), server], 1
            if sender == "lettre":
                return [str(DRIVER), "lettre", "--server", server, "--message", str(big),
                        "--count", "1"], 1
            driver = "smtplib_driver.py" if sender == "smtplib" else "twisted_driver.py"
            return [PYTHON, str(BENCH / driver), "file", "--server", server, "--message",
                    str(big)], 1

        if key == "W5":
            if sender == "smtp-source":
                raise Skip("smtp-source sends to one given host and does no MX lookup")
            if sender == "lettre":
                raise Skip("lettre does no MX lookup: its transports take one relay host")
            slow = sender in SLOW_SENDERS
            count = s.slow_mx_messages if slow else s.mx_messages
            domains = s.slow_mx_domains if slow else s.mx_domains
            nameserver = self.zone(domains)
            if sender == "mxsend":
                return [str(DRIVER), "mxsend-mx", "--nameserver", nameserver, "--port",
                        str(self.port), "--message", str(small), "--domains", str(domains),
                        "--count", str(count)], count
            driver = "smtplib_driver.py" if sender == "smtplib" else "twisted_driver.py"
            return [PYTHON, str(BENCH / driver), "mx", "--nameserver", nameserver, "--port",
                    str(self.port), "--message", str(small), "--domains", str(domains),
                    "--count", str(count)], count

        if key == "W6":
            if sender != "mxsend":
                raise Skip("W6 measures mxsend's own durable spool and delivery daemon")
            if not CLI.exists():
                raise Skip("not run: the mxsend command did not build (see bench/run output)")
            count = s.spool_messages
            return [PYTHON, str(BENCH / "spool_driver.py"), "--cli", str(CLI), "--port",
                    str(self.port), "--message", str(small), "--count", str(count)], count
        raise AssertionError(key)


class Skip(Exception):
    """A sender cannot run a workload; the message says why."""


def summarize(cell, settings_messages):
    walls = [run["wall"] for run in cell.runs]
    rates = sorted(cell.messages / wall for wall in walls)
    rss = [run["rss_kib"] for run in cell.runs if run["rss_kib"] is not None]
    cpu = [run["cpu"] for run in cell.runs]
    return {
        "median": statistics.median(rates),
        "low": rates[0],
        "high": rates[-1],
        "rss_mib": max(rss) / 1024 if rss else None,
        "cpu": statistics.median(cpu),
        "wall": statistics.median(walls),
    }


def machine_description():
    def command_output(command):
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            memory = f"{int(line.split()[1]) // 1024 // 1024} GiB"
    lock = (BENCH / "Cargo.lock").read_text()
    lettre = re.search(r'name = "lettre"\nversion = "([^"]+)"', lock)
    import twisted

    return {
        "cpu": f"{model}, {os.cpu_count()} logical CPUs",
        "memory": memory,
        "kernel": platform.release(),
        "rustc": command_output(["rustc", "--version"]),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "lettre": lettre.group(1) if lettre else "unknown",
        "postfix": command_output(["dpkg-query", "-W", "-f", "${Version}", "postfix"]),
    }


def format_rate(value):
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_ratio(ratio):
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.4f}x"


def render_table(workloads, cells, settings):
    lines = [
        "| workload | sender | messages per run | msg/s (median) | spread (min to max) "
        "| ratio to smtp-source | peak RSS | CPU s (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload in workloads:
        baseline = cells[workload.key]["smtp-source"]
        base_rate = summarize(baseline, 0)["median"] if baseline.runs else None
        for sender in SENDERS:
            cell = cells[workload.key][sender]
            if cell.skipped or cell.error:
                reason = cell.skipped or f"failed: {cell.error}"
                lines.append(f"| {workload.key} | {sender} | | {reason} | | | | |")
                continue
            summary = summarize(cell, workload.messages)
            ratio = format_ratio(summary["median"] / base_rate) if base_rate else "n/a"
            count = f"{cell.messages:,}"
            if cell.messages != workload.messages:
                count += " (reduced)"
            rss = f"{summary['rss_mib']:.1f} MiB" if summary["rss_mib"] is not None else "n/a"
            lines.append(
                f"| {workload.key} | {sender} | {count} | {format_rate(summary['median'])} "
                f"| {format_rate(summary['low'])} to {format_rate(summary['high'])} "
                f"| {ratio} | {rss} | {summary['cpu']:.2f} |"
            )
    return "\n".join(lines)


def plot(workloads, cells, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [w for w in workloads if any(cells[w.key][s].runs for s in SENDERS)]
    figure, axes = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(SENDERS)
    for index, sender in enumerate(SENDERS):
        xs, medians, below, above = [], [], [], []
        for position, workload in enumerate(shown):
            cell = cells[workload.key][sender]
            if not cell.runs:
                continue
            summary = summarize(cell, workload.messages)
            xs.append(position + (index - (len(SENDERS) - 1) / 2) * width)
            medians.append(summary["median"])
            below.append(summary["median"] - summary["low"])
            above.append(summary["high"] - summary["median"])
        axes.bar(xs, medians, width, yerr=[below, above], capsize=2, label=sender)
    axes.set_yscale("log")
    axes.set_xticks(range(len(shown)), [w.key for w in shown])
    axes.set_ylabel("messages per second (log scale, bars: min to max)")
    axes.set_title("mxsend benchmark: throughput per workload and sender")
    axes.legend()
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


MARK_START = "<!-- bench/run output starts here -->"
MARK_END = "<!-- bench/run output ends here -->"


def write_document(path, text):
    """Replace the generated section of the document, keeping the rest."""
    block = f"{MARK_START}\n{text}\n{MARK_END}"
    if path.exists():
        current = path.read_text()
        if MARK_START in current and MARK_END in current:
            head, rest = current.split(MARK_START, 1)
            _, tail = rest.split(MARK_END, 1)
            path.write_text(head + block + tail)
            return
        path.write_text(current.rstrip("\n") + "\n\n" + block + "\n")
        return
    path.write_text(f"# Benchmarks\n\n{block}\n")


def main():
    parser = argparse.ArgumentParser(description="Run the mxsend benchmarks (see bench/run).")
    parser.add_argument("--quick", action="store_true", help="smaller counts, 3 repetitions")
    parser.add_argument("--repetitions", type=int, help="repetitions of every cell")
    parser.add_argument("--only", help="comma-separated workloads, such as W1,W4")
    parser.add_argument("--command-line", default="bench/run", help="command shown in the report")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"),
                        help="Markdown file whose generated section is replaced")
    args = parser.parse_args()

    settings = QUICK if args.quick else FULL
    if args.repetitions:
        settings.repetitions = args.repetitions
    bench = Bench(args, settings)
    workloads = bench.workloads()
    if args.only:
        wanted = set(args.only.split(","))
        workloads = [w for w in workloads if w.key in wanted or w.key.split("/")[0] in wanted]
    cells = {w.key: {s: Cell() for s in SENDERS} for w in workloads}

    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        bench.start_sink()
        for repetition in range(settings.repetitions):
            order = SENDERS[repetition % len(SENDERS):] + SENDERS[:repetition % len(SENDERS)]
            for workload in workloads:
                for sender in order:
                    cell = cells[workload.key][sender]
                    if cell.skipped or cell.error:
                        continue
                    try:
                        command, messages = bench.command(workload, sender)
                    except Skip as skip:
                        cell.skipped = str(skip)
                        continue
                    cell.messages = messages
                    cell.command = shlex.join(command)
                    try:
                        run = run_measured(command, messages)
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        cell.error = str(error)
                        print(f"{workload.key} {sender}: {error}", file=sys.stderr)
                        continue
                    cell.runs.append(run)
                    print(f"repetition {repetition + 1}/{settings.repetitions} {workload.key} "
                          f"{sender}: {messages / run['wall']:,.1f} msg/s, "
                          f"{(run['rss_kib'] or 0) / 1024:.1f} MiB", flush=True)
    finally:
        bench.stop_servers()
    duration = time.monotonic() - started

    results_dir = TARGET / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw = {
        "command": args.command_line,
        "started": started_at,
        "duration_seconds": duration,
        "machine": machine_description(),
        "cells": {
            w.key: {s: vars(cells[w.key][s]) for s in SENDERS} for w in workloads
        },
    }
    (results_dir / f"{stamp}.json").write_text(json.dumps(raw, indent=2))

    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    image = doc.with_suffix(".png")
    plot(workloads, cells, image)
    machine = raw["machine"]
    mode = "quick mode" if args.quick else "full mode"
    text = "\n".join([
        f"Figures from `{args.command_line}` ({mode}), started {started_at}, "
        f"{settings.repetitions} repetitions, {duration / 60:.1f} minutes in all.",
        "",
        f"- Machine: {machine['cpu']}, {machine['memory']} RAM, Linux {machine['kernel']}.",
        f"- Peers: Postfix {machine['postfix']} (smtp-sink, smtp-source), lettre "
        f"{machine['lettre']}, Python {machine['python']} smtplib, Twisted {machine['twisted']}; "
        f"{machine['rustc']}.",
        f"- Raw results: `bench/target/results/{stamp}.json` (not committed).",
        "",
        "| workload | what is sent |",
        "| --- | --- |",
        *[f"| {w.key} | {w.title} |" for w in workloads],
        "",
        render_table(workloads, cells, settings),
        "",
        f"![Throughput per workload and sender]({image.name})",
    ])
    write_document(doc, text)
    print(render_table(workloads, cells, settings))
    print(f"wrote {doc} and {image} after {duration / 60:.1f} minutes")


if __name__ == "__main__":
    main()
