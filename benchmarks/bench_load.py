"""The jobs page under load: the API at 100 requests/s, and 20 browsers on live logs.

    python benchmarks/bench_load.py              # the figures in docs/benchmarks.md
    python benchmarks/bench_load.py --smoke      # one quick pass (CI)

A local gateway and local storage holding 10,000 finished jobs (records and
index packs, as runners leave them), and two `python -m dask_batch.ui`
servers, the same but for ``batch.ui.listing-ttl`` (1 s, the default, and 0:
every request lists). Then, side by side:

- an open-loop load of ``--rate`` `GET /api/v1/jobs` per second for
  ``--seconds`` on each server (requests go out on schedule whether or not
  earlier ones have answered, so a slow server is not hidden; latency counts
  from when a request was due), from an aiohttp client in this process;
- ``--browsers`` headless Chromium pages (one browser, Debian's, driven by
  Playwright; skipped if it is not installed) following the live log of one
  running job on the default server, as users do: the delay from main
  printing a line to the line appearing in each page (a MutationObserver in
  the page records when), against one page alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import write_job_records

CHROMIUM = "/usr/bin/chromium"


def prints_timestamps(count, interval, gate):
    import os
    import time

    # Printing starts once every page follows the log: a page observes only
    # the lines that arrive after it has loaded.
    deadline = time.monotonic() + 120
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no page opened the job's log within 120 s ({gate})")
        time.sleep(0.02)
    for _ in range(count):
        print(f"at {time.time():.6f}", flush=True)
        time.sleep(interval)


class Server:
    """`python -m dask_batch.ui` on ``storage``, with extra environment."""

    def __init__(self, info, storage, **env):
        environment = dict(
            os.environ, **info.environment(), DASK_BATCH__STORAGE=storage, **env
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dask_batch.ui", "--no-browser"],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().split(" ", 2)[2].strip()
        self.base, _, self.token = self.url.partition("/?token=")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


async def open_loop(server, rate, seconds):
    """Latencies (s) of `GET /api/v1/jobs` sent on schedule; failures counted."""
    import aiohttp

    headers = {"Authorization": f"token {server.token}"}
    latencies, failures = [], 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1

        async def one(due):
            nonlocal failures
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                async with session.get(f"{server.base}/api/v1/jobs") as answer:
                    await answer.read()
                    if answer.status != 200:
                        failures += 1
                        return
            except aiohttp.ClientError:
                failures += 1
                return
            latencies.append(loop.time() - due)

        await asyncio.gather(
            *(one(start + i / rate) for i in range(int(rate * seconds)))
        )
    return latencies, failures


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def follow_in_browsers(server, batch, browsers, lines, interval, gate):
    """Delays (s) from a printed line to it showing in each of ``browsers``
    pages; the job prints once the file ``gate`` exists."""
    from playwright.sync_api import sync_playwright

    record = """() => {
        window.__seen = [];
        const log = document.getElementById("log");
        new MutationObserver(() => {
            for (const line of log.textContent.split("\\n")) {
                if (line.startsWith("at ") && !window.__seen.some(s => s[0] === line)) {
                    window.__seen.push([line, Date.now() / 1000]);
                }
            }
        }).observe(log, {childList: true, characterData: true, subtree: true});
    }"""
    args = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
    ]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        context = browser.new_context()
        job = batch.submit(prints_timestamps, lines, interval, gate, workers=0)
        pages = []
        for _ in range(browsers):
            page = context.new_page()
            page.goto(server.url.replace("/?token=", f"/jobs/{job.id}?token="))
            page.evaluate(record)
            pages.append(page)
        with open(gate, "w"):
            pass
        batch.wait(job.id, timeout=120)
        deadline = time.monotonic() + 30
        delays = []
        for page in pages:
            while True:
                seen = page.evaluate("window.__seen")
                if len(seen) >= lines or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(200)
            delays += [shown - float(line[3:]) for line, shown in seen]
        browser.close()
    if not delays:
        raise RuntimeError(f"no page showed a line of job {job.id}'s log")
    return delays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--browsers", type=int, default=20)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.rate, args.seconds, args.browsers = 100, 20, 1, 2
    lines, interval = (3, 0.2) if args.smoke else (20, 0.25)
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-load-")
    storage = os.path.join(directory, "jobs")
    info = dask_batch.local.start(
        os.path.join(directory, "gateway"), environment=cluster_environment(args.smoke)
    )
    servers = {}
    try:
        batch = BatchClient(gateway=info.gateway(), storage=storage)
        write_job_records(batch.store, batch.user, args.jobs, indexed=True)
        servers = {
            "listing shared for 1 s (default)": Server(info, storage),
            "every request lists (ttl 0)": Server(
                info, storage, DASK_BATCH__UI__LISTING_TTL="0"
            ),
        }
        print(
            f"## `GET /api/v1/jobs`, {args.rate:g} requests/s for "
            f"{args.seconds:g} s, {args.jobs} jobs on local storage\n"
        )
        print("| server | answered | failed | p50 | p99 | max |")
        print("|---|---|---|---|---|---|")
        for label, server in servers.items():
            asyncio.run(open_loop(server, 5, 1))  # warm: imports, the index
            latencies, failures = asyncio.run(
                open_loop(server, args.rate, args.seconds)
            )
            print(
                f"| {label} | {len(latencies)} | {failures} | "
                f"{percentile(latencies, 0.5) * 1000:.0f} ms | "
                f"{percentile(latencies, 0.99) * 1000:.0f} ms | "
                f"{max(latencies) * 1000:.0f} ms |"
            )
        if not os.path.exists(CHROMIUM):
            print(f"\n(no {CHROMIUM}: the browsers part is skipped)")
            return
        default = servers["listing shared for 1 s (default)"]
        print(f"\n## Live logs in browsers ({lines} lines, one every {interval} s)\n")
        print("| pages following one job | lines seen | median delay | p90 | max |")
        print("|---|---|---|---|---|")
        for count in (1, args.browsers):
            gate = os.path.join(directory, f"print-{count}")
            delays = follow_in_browsers(default, batch, count, lines, interval, gate)
            print(
                f"| {count} | {len(delays)} of {count * lines} | "
                f"{statistics.median(delays) * 1000:.0f} ms | "
                f"{percentile(delays, 0.9) * 1000:.0f} ms | "
                f"{max(delays) * 1000:.0f} ms |"
            )
        batch.gateway.close()
    finally:
        for server in servers.values():
            server.close()
        dask_batch.local.stop(os.path.join(directory, "gateway"))


if __name__ == "__main__":
    main()
