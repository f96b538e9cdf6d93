"""The explorer as a shared server: many concurrent sessions against one `relaylab serve` process.

    python -m benchmarks serve                       # the demo, N = 1 5 10 20 50 light sessions, 2 chromium sessions
    python -m benchmarks serve --smoke               # N = 1 5, one round, one browser
    python -m benchmarks serve --project P --sessions 10 --server-args="--cache-memory 256"

The server is a child process (`python -m relaylab serve PROJECT --no-show --address 127.0.0.1`); the load comes from
this process only, to that loopback address, with a bounded number of requests (sessions × rounds × 4 interactions)
and a time limit (`--time-limit`, the whole run stops by itself).

Light sessions (`benchmarks.sessions.LightSession`) speak Bokeh's websocket protocol like a browser's BokehJS does, but
build no models and draw nothing, so N of them cost the client little and the measured time is the server's. Per
session: open the page (HTTP request, websocket, the whole document with its first plot), then `--rounds` times, all
sessions at once: pick a category (→ its cluster buttons arrive), click a cluster button (→ the grid's cards arrive:
"click → grid data"), pan the embedding (→ the re-shaded image arrives), click a card (→ the sample inspector's
explanations arrive). Reported per N and interaction: p50/p95 latency; server CPU seconds and RSS growth per open
session; RSS while open, and 60 s after all sessions closed, against the idle RSS (server warm: one session opened,
used and closed first). Then `--browsers` real chromium sessions, one after the other on the warm server: page
requested → embedding plot drawn, with the browser console's errors collected and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import REPO, format_table, machine_info, row, write_results

DESCRIPTION = "the explorer server under N concurrent sessions (light protocol clients + a few chromium): latency, CPU, memory"
CLOSE_WAIT = 60  # seconds after the sessions close at which the server's memory is read


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", default=None, help="the project to serve (default: the built-in demo)")
    parser.add_argument("--sessions", nargs="+", type=int, default=None, help="concurrent session counts (default 1 5 10 20 50)")
    parser.add_argument("--rounds", type=int, default=None, help="workflow rounds per session (default 3, 1 with --smoke)")
    parser.add_argument("--browsers", type=int, default=None, help="chromium sessions for the first plot (default 2; 0: none)")
    parser.add_argument("--server-args", default="", help="extra arguments for `relaylab serve`, e.g. \"--cache-memory 256\"")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds; the run stops by itself after this (default 1800)")
    parser.add_argument("--close-wait", type=float, default=CLOSE_WAIT, help=f"seconds to wait after closing (default {CLOSE_WAIT})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Server:
    """`relaylab serve` as a child process on 127.0.0.1, with its CPU time and memory."""

    def __init__(self, project: str, extra: list[str]):
        import psutil

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        argv = [sys.executable, "-m", "relaylab", "serve", project, "--no-show", "--address", "127.0.0.1", "--port", str(self.port), *extra]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"relaylab-serve-{self.port}.log", "w")
        self.child = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        self.process = psutil.Process(self.child.pid)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise RuntimeError(f"the server exited with {self.child.returncode}; its log: {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not listen within 120 s")

    def rss(self) -> int:
        return self.process.memory_info().rss

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.child.terminate()
        try:
            self.child.wait(20)
        except subprocess.TimeoutExpired:
            self.child.kill()
        self.log.close()


# ---------------------------------------------------------------------------------------------------- the workflow


async def workflow_round(session, round_index: int, times: dict[str, list[float]], timeout: float) -> None:
    """One round of the main workflow in one light session; each interaction's latency into `times`."""
    category = session.find("rl-category", "CustomSelect")
    options = [o[0] if isinstance(o, list) else o for o in session.attr(category, "options") if (o[0] if isinstance(o, list) else o)]
    choice = options[(round_index * 3 + hash(id(session))) % len(options)]
    if choice == session.attr(category, "value"):
        choice = options[(options.index(choice) + 1) % len(options)]
    flex = session.find("rl-cluster-buttons")
    times["category → cluster buttons"].append(await session.timed(
        session.set(category, "value", choice), lambda c: c.model == flex and c.attr == "children", timeout))
    buttons = session.with_class("rl-cluster-button", session.refs(flex, "children"))
    cards = session.data_of(session.find("rl-cards"))
    times["cluster click → grid cards"].append(await session.timed(
        session.event("button_click", buttons[round_index % len(buttons)]), lambda c: c.model == cards and c.attr == "html", timeout))
    plot = session.find("rl-embedding-plot", "Figure", newest=True)
    x_range, y_range = session.refs(plot, "x_range")[0], session.refs(plot, "y_range")[0]
    x0, x1 = session.attr(x_range, "start"), session.attr(x_range, "end")
    y0, y1 = session.attr(y_range, "start"), session.attr(y_range, "end")
    shift = (x1 - x0) * 0.1

    async def pan():
        await session.set(x_range, "start", x0 + shift)
        await session.set(x_range, "end", x1 + shift)
        await session.event("rangesupdate", plot, x0=x0 + shift, x1=x1 + shift, y0=y0, y1=y1)

    times["pan → re-shaded image"].append(await session.timed(pan(), lambda c: c.attr == "data" and c.model is not None
                                                               and session.models.get(c.model, {}).get("name") == "ColumnDataSource", timeout))
    match = re.search(r'data-sample="(\d+)"', session.attr(cards, "html") or "")
    if match:
        sample = match.group(1)

        def explained(change) -> bool:  # the inspector's figures of this sample are in the document
            try:
                body = session.data_of(session.find("rl-inspector", newest=True))
            except LookupError:  # the tab is drawn on first use: not yet
                return False
            return f'data-sample="{sample}"' in (session.attr(body, "html") or "") and "rl-explanation" in session.attr(body, "html")

        times["card click → inspector"].append(await session.timed(
            session.event("data_event", session.find("rl-cards"), data={"action": "inspect", "sample": int(sample)}), explained, timeout))


async def run_level(server: Server, n: int, rounds: int, timeout: float) -> dict:
    from .sessions import LightSession

    sessions = [LightSession(server.url) for _ in range(n)]
    cpu0 = server.cpu()
    opened = await asyncio.gather(*(s.open(timeout) for s in sessions))
    times: dict[str, list[float]] = {k: [] for k in ("category → cluster buttons", "cluster click → grid cards",
                                                     "pan → re-shaded image", "card click → inspector")}
    errors = 0
    for r in range(rounds):
        results = await asyncio.gather(*(workflow_round(s, r, times, timeout) for s in sessions), return_exceptions=True)
        errors += sum(isinstance(x, BaseException) for x in results)
        for x in results:
            if isinstance(x, BaseException):
                print(f"  N={n} round {r}: {type(x).__name__}: {x}", flush=True)
    rss_open = server.rss()
    cpu = server.cpu() - cpu0
    received = sum(s.received_bytes for s in sessions)
    for s in sessions:
        await s.close()
    return {"open": list(opened), "times": times, "errors": errors, "rss_open": rss_open, "cpu": cpu, "received": received}


def wait_memory(server: Server, idle: int, seconds: float) -> list[tuple[float, int]]:
    """RSS every 5 s for `seconds` after the sessions closed."""
    trace, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(min(5, seconds))
        trace.append((time.monotonic() - started, server.rss()))
    return trace


# ---------------------------------------------------------------------------------------------------- browsers


def browser_first_plots(url: str, count: int, timeout: float) -> tuple[list[float], list[str]]:
    """Seconds from requesting the page to the embedding plot drawn, per chromium session; console errors."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run"]
    times, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            for _ in range(count):
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                started = time.perf_counter()
                page.goto(url)
                page.wait_for_selector(".rl-embedding-plot canvas", timeout=timeout * 1000)
                times.append(time.perf_counter() - started)
                page.close()
        finally:
            browser.close()
    return times, errors


# ---------------------------------------------------------------------------------------------------- the suite


def run(args: argparse.Namespace) -> int:
    levels = args.sessions or ([1, 5] if args.smoke else [1, 5, 10, 20, 50])
    rounds = args.rounds or (1 if args.smoke else 3)
    browsers = args.browsers if args.browsers is not None else (1 if args.smoke else 2)
    deadline = time.monotonic() + args.time_limit
    project = args.project
    if project is None:
        from relaylab.demo import ensure_demo

        project = str(ensure_demo())
    server = Server(project, args.server_args.split())
    rows, notes = [], []
    try:
        warm = asyncio.run(run_level(server, 1, 1, 120))  # loads the project, the model, torch's first passes
        time.sleep(5)
        idle = server.rss()
        print(f"server warm: first session opened in {warm['open'][0]:.2f} s; idle RSS {idle / 2**20:.0f} MB", flush=True)
        rows.append(row("serve", "idle", "server RSS (warm, no session)", idle / 2**20, "MB"))
        for n in levels:
            left = deadline - time.monotonic()
            if left < 60:
                notes.append(f"time limit: N = {n} and later not run")
                break
            result = asyncio.run(asyncio.wait_for(run_level(server, n, rounds, min(120, left)), left))
            case = f"N={n}"
            rows.append(row("serve", case, "open (page → document)", result["open"], "s", p95=percentile(result["open"], 95)))
            for name, values in result["times"].items():
                if values:
                    goal = "p95 ≤ 1 s at N = 20" if name == "cluster click → grid cards" else ""
                    p95 = percentile(values, 95)
                    rows.append(row("serve", case, name, values, "s", goal=goal, ok=(p95 <= 1.0) if goal and n == 20 else None, p95=p95))
            growth = (result["rss_open"] - idle) / n / 2**20
            rows.append(row("serve", case, "RSS growth per open session", growth, "MB", goal="≤ 50 MB", ok=growth <= 50))
            rows.append(row("serve", case, "server CPU per session", result["cpu"] / n, "s"))
            rows.append(row("serve", case, "errors", result["errors"], "count", goal="0", ok=result["errors"] == 0))
            trace = wait_memory(server, idle, min(args.close_wait, max(0, deadline - time.monotonic() - 30)))
            after = trace[-1][1] if trace else server.rss()
            ratio = after / idle
            rows.append(row("serve", case, f"RSS {trace[-1][0]:.0f} s after closing / idle" if trace else "RSS after closing / idle",
                            ratio, "×", goal="≤ 1.10", ok=ratio <= 1.10))
            print(f"N={n}: open p50 {statistics.median(result['open']):.2f} s; "
                  + "; ".join(f"{k} p50 {statistics.median(v):.3f} / p95 {percentile(v, 95):.3f} s" for k, v in result["times"].items() if v)
                  + f"; RSS open {result['rss_open'] / 2**20:.0f} MB, after {after / 2**20:.0f} MB; errors {result['errors']}", flush=True)
        if browsers and deadline - time.monotonic() > 60:
            firsts, console = browser_first_plots(server.url, browsers, min(120, deadline - time.monotonic()))
            rows.append(row("serve", "chromium, warm server", "page requested → plot drawn", firsts, "s", goal="≤ 2 s",
                            ok=statistics.median(firsts) <= 2))
            rows.append(row("serve", "chromium, warm server", "browser console errors", len(console), "count", goal="0", ok=not console))
            notes += [f"console: {text}" for text in console[:20]]
    finally:
        server.stop()
    print(format_table(rows))
    for note in notes:
        print(note)
    config = {"project": project, "levels": levels, "rounds": rounds, "browsers": browsers, "server_args": args.server_args}
    json_path, _ = write_results("serve", rows, out=args.out, config=config, machine=machine_info(), notes=notes)
    print(f"results: {json_path}")
    return 0
