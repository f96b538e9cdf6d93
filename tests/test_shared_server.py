"""The explorer as a shared server: sessions share one model and are freed when they close, a login guards the page
and the image routes, hostile input gets a 4xx (never a 500), and several server processes serve each other's share
links and images. Real servers (in this process or as children), driven over Bokeh's websocket protocol by
`benchmarks.sessions.LightSession`, as a browser's BokehJS drives them."""

from __future__ import annotations

import asyncio
import base64
import gc
import http.client
import sys
import time
import urllib.parse
import weakref

import panel as pn
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.sessions import LightSession
from relaylab.explore import app as explorer_app
from relaylab.explore.data import ProjectData, project_key
from tests.helpers import free_port, get, make_store, wait_for
from tests.test_images import child_server


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("shared") / "project.zarr", n=24)


@pytest.fixture
def in_process_server(model_store):
    """`relaylab serve`'s app on a Panel server in this process, freeing closed sessions after ~0.2 s."""
    port = free_port()
    server = pn.serve({"/": lambda: explorer_app.build_app([model_store])}, port=port, address="127.0.0.1", threaded=True,
                      show=False, start=True, check_unused_sessions_milliseconds=200, unused_session_lifetime_milliseconds=200)
    try:
        wait_for(port, "/", timeout=120)
        yield port
    finally:
        server.stop()


async def open_and_explain(url: str, sample: int) -> LightSession:
    """A session that types a sample into the inspector and waits for its explanations (which need the model)."""
    session = LightSession(url)
    await session.open()

    def explained(change) -> bool:
        body = session.attr(session.data_of(session.find("rl-inspector", newest=True)), "html") or ""
        return f'data-sample="{sample}"' in body and 'data-kind="lrp' in body

    await session.timed(session.set(session.find("rl-sample-input", newest=True), "value", sample), explained, timeout=120)
    return session


def test_sessions_share_one_model_and_closed_sessions_are_freed(in_process_server, model_store, monkeypatch):
    from relaylab.explain import live

    loads = []
    original = live.SampleExplainer.__init__
    monkeypatch.setattr(live.SampleExplainer, "__init__", lambda self, *a, **k: (loads.append(1), original(self, *a, **k))[1])
    ProjectData.of(model_store)._explainer = None  # this process may have loaded it for another test: count from here
    explorer_app.LIVE.clear()

    url = f"http://127.0.0.1:{in_process_server}/"

    async def run() -> list:
        sessions = await asyncio.gather(*(open_and_explain(url, k) for k in (1, 2, 3)))
        # these sessions' apps: on a busy machine a readiness request that timed out and was retried can still build
        # its page (an app) after the clear above; it is released like any unused session
        apps = [a for a in explorer_app.LIVE if a.views and a.views[0].state.sample in (1, 2, 3)]
        assert len(apps) == 3
        explainers = {id(a.views[0].sample_inspector.data.explainer) for a in apps}
        assert len(explainers) == 1 and len(loads) == 1  # three sessions, one model, loaded once
        states = [a.views[0].state for a in apps]
        assert sorted(s.sample for s in states) == [1, 2, 3]  # and each session has its own view
        refs = [weakref.ref(a) for a in apps] + [weakref.ref(s) for s in states]
        del apps, states
        for session in sessions:
            await session.close()
        deadline = time.monotonic() + 30
        while (any(r() is not None for r in refs) or len(explorer_app.LIVE)) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            gc.collect()
        return refs

    refs = asyncio.run(run())
    assert all(r() is None for r in refs), "a closed session's app or state is still referenced"
    assert len(explorer_app.LIVE) == 0
    assert ProjectData.of(model_store)._explainer is not None  # the shared model stays for the next session


# ------------------------------------------------------------------------------------------------ logging in


def request(port: int, method: str, url: str, body: str | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, url, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.headers.get_all("Set-Cookie") or [], data


def login(port: int, password: str) -> list[str]:
    form = urllib.parse.urlencode({"username": "ana", "password": password})
    status, headers, cookies, _ = request(port, "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status in (302, 303), status
    return [c.split(";")[0] for c in cookies if c.startswith("user=")]


def test_basic_auth_refuses_a_wrong_password_for_the_page_and_the_image_route(model_store, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "relaylab", "serve", str(model_store), "--port", str(port), "--no-show",
               "--basic-auth", "right horse", "--cookie-secret", "a-test-secret-of-some-length"]
    image = f"/relaylab/img/{project_key(model_store)}/3.png?mode=input"
    with child_server(command, port, "/login", tmp_path / "serve.log", timeout=300):
        status, headers, _, _ = request(port, "GET", "/")
        assert status == 302 and "login" in headers["location"]  # the page: log in first
        status, _, _, body = request(port, "GET", image)
        assert status == 401 and b"authentication required" in body  # the image route: refused, not redirected
        assert login(port, "wrong horse") == []  # a wrong password gets no session cookie …
        cookie = login(port, "right horse")
        assert len(cookie) == 1
        status, _, _, _ = request(port, "GET", image, headers={"Cookie": "user=forged"})
        assert status == 401  # … nor does a cookie the server did not sign
        status, headers, _, body = request(port, "GET", image, headers={"Cookie": cookie[0]})
        assert status == 200 and headers["content-type"] == "image/png"
        status, _, _, body = request(port, "GET", "/", headers={"Cookie": cookie[0]})
        assert status == 200 and b"<title>relaylab explorer</title>" in body


# ------------------------------------------------------------------------------------------------ hostile input


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, make_project_module):
    path = make_project_module("hostile", n_samples=24, height=12, width=20)
    port = free_port()
    command = [sys.executable, "-m", "relaylab", "serve", str(path), "--port", str(port), "--no-show"]
    with child_server(command, port, "/", tmp_path_factory.mktemp("log") / "serve.log", timeout=300):
        yield port, path


@pytest.fixture(scope="module")
def make_project_module(tmp_path_factory):
    from relaylab.data.synthetic import Variant, write_virelay_project

    folder = tmp_path_factory.mktemp("projects")
    return lambda name, **fields: write_virelay_project(folder / name, Variant(**fields), name=name)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


def answered_well(status: int, body: bytes) -> bool:
    return status < 500 and b"Traceback" not in body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.one_of(TEXT, st.just(None)), sample=TEXT, query=st.dictionaries(TEXT, TEXT, max_size=4))
def test_image_routes_answer_any_request_with_a_4xx_or_an_image(open_server, key, sample, query):
    port, path = open_server
    key = project_key(path) if key is None else key
    quote = lambda text: urllib.parse.quote(text, safe="")
    for url in (f"/relaylab/img/{quote(key)}/{quote(sample)}.png?{urllib.parse.urlencode(query)}",
                f"/relaylab/colormap/{quote(sample)}.png?{urllib.parse.urlencode(query)}"):
        status, headers, _, body = request(port, "GET", url)
        assert answered_well(status, body), (url, status, body[:300])
        routed = "/relaylab/img//" not in url and "/.png" not in url  # else no route matches: the server's plain 404
        if status >= 400 and routed:
            assert headers["content-type"].startswith("text/plain") and body.strip(), (url, body)


def test_hostile_image_requests_are_bounded_and_the_server_stays_responsive(open_server):
    port, path = open_server
    key = project_key(path)
    cases = [
        (f"/relaylab/img/{key}/{'9' * 40}.png?mode=input", 400, "non-negative integer"),
        (f"/relaylab/img/{key}/3.png?mode=overlay&colormap={'x' * 5000}", 400, "at most 64 characters"),
        (f"/relaylab/img/{key}/3.png?mode=input&mode=overlay", 400, "one value"),
        (f"/relaylab/img/{key}/3.png?path=/etc/passwd", 400, "not a parameter"),
        (f"/relaylab/img/{'k' * 200}/3.png", 404, "unknown project"),
        ("/relaylab/img/..%2F..%2F..%2Fetc%2Fpasswd/3.png", 404, "unknown project"),
        ("/relaylab/colormap/bwr.png?width=100000&height=100000", 400, "width, height"),
        ("/relaylab/colormap/bwr.png?width=123456789", 400, "at most 8 characters"),
        ("/relaylab/colormap/bwr.png?width=1e400", 400, "width, height: expected integers"),
    ]
    for url, expected, message in cases:
        started = time.perf_counter()
        status, headers, _, body = request(port, "GET", url)
        assert status == expected and message in body.decode(), (url, status, body[:300])
        assert time.perf_counter() - started < 5
    assert get(port, f"/relaylab/img/{key}/3.png?mode=input")[0] == 200


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.sampled_from(["project", "analysisMethod", "analysisCategory", "embedding", "clustering",
                                              "embeddingVectors", "page", "pageSize", "colorMap", "imageMode", "sample",
                                              "pinned", "tab", "depth", "firstEmbeddingDimension", "x"]), TEXT, max_size=5))
def test_any_share_link_opens_the_page_or_says_what_is_wrong(open_server, query):
    port, _ = open_server
    status, _, _, body = request(port, "GET", "/?" + urllib.parse.urlencode(query))
    assert status == 200 and b"<title>relaylab explorer</title>" in body, (query, status, body[:300])


def test_long_share_links_are_checked_and_oversized_requests_refused(open_server):
    """A 50 kB link (a selection of 10,000 samples in a 24-sample project) opens the page with a message; a request
    head over tornado's 64 kB limit is refused before the app sees it; either way the server answers the next request."""
    port, _ = open_server
    status, _, _, body = request(port, "GET", "/?project=hostile&embeddingVectors=" + ",".join(str(i) for i in range(10_000)))
    assert status == 200 and b"<title>relaylab explorer</title>" in body
    try:
        status = request(port, "GET", "/?embeddingVectors=" + ",".join(str(i) for i in range(40_000)))[0]
        assert 400 <= status < 500
    except ConnectionError:  # tornado closes a connection whose request head is too large, without an answer
        pass
    assert get(port, "/")[0] == 200


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"projectName": "hostile", "selectedDataPoints": [' + ",".join(["1"] * 10) + "]" + " " * (9 * 2**20) + "}", "too large"),
    ("\xff\xfe not json", "JSON"),
    ('{"projectName": "hostile", "selectedAnalysisMethod": {"name": 1}}', "selectedAnalysisMethod"),
])
def test_an_imported_hostile_state_file_gets_a_message_and_changes_nothing(open_server, content, message):
    """The Import button's file, sent over the websocket as the browser's FileInput sends it."""
    port, _ = open_server

    async def run() -> str:
        session = LightSession(f"http://127.0.0.1:{port}/")
        await session.open()
        alert = session.find("rl-alert", newest=True)
        upload = session.find("rl-import", newest=True)
        data = content.encode("utf-8", "surrogateescape") if content.startswith("\xff") else content.encode()
        data = b"\xff\xfe not json" if content.startswith("\xff") else data

        async def send() -> None:
            await session.set(upload, "filename", "state.json")
            await session.set(upload, "mime_type", "application/json")
            await session.set(upload, "value", base64.b64encode(data).decode())

        await session.timed(send(), lambda c: c.model == alert and c.attr == "text", timeout=60)
        text = session.attr(alert, "text")
        await session.close()
        return text

    text = asyncio.run(run())
    assert "could not be imported" in text and message in text, text
    assert get(port, "/")[0] == 200


# ------------------------------------------------------------------------------------------------ several processes


def test_num_procs_2_serves_each_others_share_links_and_images(make_project_module, tmp_path):
    import psutil

    path = make_project_module("procs", n_samples=30, height=12, width=20)
    port = free_port()
    command = [sys.executable, "-m", "panel", "serve", "apps/explorer.py", "--port", str(port), "--address", "127.0.0.1",
               "--num-procs", "2", "--args", str(path)]
    with child_server(command, port, "/explorer", tmp_path / "serve.log", timeout=300) as server:
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 2

        async def run() -> tuple[list[str], list[str], dict[int, int]]:
            sessions = [LightSession(f"http://127.0.0.1:{port}/explorer") for _ in range(8)]
            for session in sessions:  # one at a time: each on a fresh connection, which the kernel gives to either process
                await session.open()
            served_by = {w.pid: sum(1 for c in w.net_connections(kind="inet") if c.status == psutil.CONN_ESTABLISHED
                                    and c.laddr.port == port) for w in workers}
            links, images = [], []
            for k, session in enumerate(sessions):
                category = session.find("rl-category", "CustomSelect", newest=True)
                options = [o[0] for o in session.attr(category, "options") if o[0] and o[0] != session.attr(category, "value")]
                share = session.find("rl-share", newest=True)
                await session.timed(session.set(category, "value", options[k % len(options)]),
                                    lambda c: c.model == share and c.attr == "value", timeout=60)
                # the link as the page shows it (this client sends no browser location: its query part only)
                links.append(f"http://127.0.0.1:{port}/explorer?" + session.attr(share, "value").split("?", 1)[1])
                flex = session.find("rl-cluster-buttons", newest=True)
                button = session.with_class("rl-cluster-button", session.refs(flex, "children"))[0]
                cards = session.data_of(session.find("rl-cards", newest=True))
                await session.timed(session.event("button_click", button), lambda c: c.model == cards and c.attr == "html", 60)
                html = session.attr(cards, "html")
                images += [urllib.parse.unquote(u).replace("&amp;", "&") for u in
                           __import__("re").findall(r'src="(/relaylab/img/[^"]+)"', html)][:3]
                await session.close()
            return links, images, served_by

        links, images, served_by = asyncio.run(run())
        assert all(n >= 1 for n in served_by.values()), served_by  # both processes held sessions

        async def reopen(link: str) -> str:
            session = LightSession(link)
            await session.open()
            value = session.attr(session.find("rl-share", newest=True), "value")
            alert = session.attr(session.find("rl-alert", newest=True), "visible")
            await session.close()
            return value, alert

        for link in links:  # every share link, opened on whichever process takes the new connection
            value, alert_visible = asyncio.run(reopen(link))
            assert not alert_visible and value.split("?")[1] == link.split("?")[1]
        assert images and all(get(port, url)[0] == 200 for url in images)
