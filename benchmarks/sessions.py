"""A light explorer session: Bokeh's websocket protocol spoken directly, without a browser and without models.

A browser session of the explorer costs the machine hundreds of MB and a core of its own; a load test that runs 50 of
them on the server's 2 cores measures the browsers. `bokeh.client` cannot stand in either: it rebuilds every model of
the document in Python and does not know Panel's per-component data models (`ClickableHTML1`, …). This client does
what the browser's BokehJS does on the wire and nothing else: GET the page (the server builds the session and embeds
its token), open `/ws` with the token, pull the document as JSON, send the messages a user's interaction sends (a
widget's new value, a button click, a component's message, a plot's new range) and time until the server's answer
arrives (the PATCH-DOC that changes the model in question). Models are found by their `css_classes`, as the browser
tests find elements.

Written by hand because neither bokeh nor panel ship a protocol-level client; the wire format (header, metadata,
content, then buffer header/payload pairs; `ModelChanged` and `MessageSent` events) is Bokeh 3's `bokeh.protocol`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TOKEN = re.compile(r'"token":"([^"]+)"')
_ids = itertools.count()


def walk(value, found: dict) -> None:
    """Collect every object representation ({"type": "object", "id", "name", "attributes"}) in a JSON value."""
    if isinstance(value, dict):
        if value.get("type") == "object" and "id" in value:
            found.setdefault(value["id"], {"name": value.get("name"), "attributes": {}})["attributes"].update(
                value.get("attributes") or {})
        for item in value.values():
            walk(item, found)
    elif isinstance(value, list):
        for item in value:
            walk(item, found)


@dataclass
class Change:
    """One change the server sent: (model id, attribute, new value) of a ModelChanged, or a MessageSent's type."""

    model: str | None
    attr: str | None
    new: object
    at: float


@dataclass
class LightSession:
    """One explorer session over Bokeh's protocol (see the module docstring). `await open()`, then interact."""

    url: str  # http://127.0.0.1:PORT/[?share-link query]
    headers: dict = field(default_factory=dict)  # e.g. a Cookie for a server with authentication
    models: dict = field(default_factory=dict)  # id → {"name", "attributes"}
    changes: list = field(default_factory=list)
    received_bytes: int = 0

    async def open(self, timeout: float = 120) -> float:
        """Request the page, connect, pull the document; seconds until the document (first plot included) arrived."""
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest
        from tornado.websocket import websocket_connect

        started = time.perf_counter()
        # a client of its own: the shared one queues all but 10 requests, so 50 sessions opening at once would time out
        # in the client's queue, not in the server
        client = AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(HTTPRequest(self.url, headers=self.headers, request_timeout=timeout))
        finally:
            client.close()
        page = response.body.decode()
        match = TOKEN.search(page)
        if match is None:
            raise RuntimeError(f"{self.url}: no Bokeh session token in the page ({len(page)} bytes)")
        base = self.url.split("?")[0].rstrip("/")
        ws_url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
        request = HTTPRequest(ws_url, headers=self.headers, request_timeout=timeout)
        self.conn = await websocket_connect(request, subprotocols=["bokeh", match.group(1)], max_message_size=2**30)
        self._waiters: list[tuple[Callable[[Change], bool], asyncio.Future]] = []
        header, _, _ = await self._read()  # ACK
        if header["msgtype"] != "ACK":
            raise RuntimeError(f"expected ACK, got {header['msgtype']}")
        await self._send("PULL-DOC-REQ", {})
        header, content, _ = await self._read()
        if header["msgtype"] != "PULL-DOC-REPLY":
            raise RuntimeError(f"expected PULL-DOC-REPLY, got {header['msgtype']}: {content}")
        walk(content["doc"], self.models)
        self._reader = asyncio.ensure_future(self._read_forever())
        await self._send_event({"type": "event", "name": "document_ready", "values": {"type": "map", "entries": []}})
        return time.perf_counter() - started

    async def close(self) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
            self.conn = None
        if getattr(self, "_reader", None) is not None:
            self._reader.cancel()

    # ------------------------------------------------------------------------------------------------ the wire

    async def _send(self, msgtype: str, content: dict) -> None:
        header = {"msgid": f"rl{next(_ids)}", "msgtype": msgtype}
        for part in (header, {}, content):
            await self.conn.write_message(json.dumps(part))

    async def _read(self) -> tuple[dict, dict, list]:
        frames = []
        for _ in range(3):
            frame = await self.conn.read_message()
            if frame is None:
                raise ConnectionError("the server closed the connection")
            self.received_bytes += len(frame)
            frames.append(json.loads(frame))
        header, _, content = frames
        buffers = []
        for _ in range(header.get("num_buffers", 0)):
            await self.conn.read_message()
            payload = await self.conn.read_message()
            self.received_bytes += len(payload or b"")
            buffers.append(payload)
        return header, content, buffers

    async def _read_forever(self) -> None:
        try:
            while True:
                header, content, _ = await self._read()
                if header["msgtype"] != "PATCH-DOC":
                    continue
                now = time.perf_counter()
                walk(content, self.models)
                for event in content.get("events", []):
                    model = (event.get("model") or {}).get("id")
                    change = Change(model, event.get("attr"), event.get("new"), now)
                    if model in self.models and change.attr is not None:
                        self.models[model]["attributes"][change.attr] = change.new
                    self.changes.append(change)
                    for waiter in list(self._waiters):
                        if not waiter[1].done() and waiter[0](change):
                            waiter[1].set_result(change)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as error:  # a malformed message: every waiter learns of it
            for _, future in self._waiters:
                if not future.done():
                    future.set_exception(error)

    # ------------------------------------------------------------------------------------------------ models

    def find(self, css: str, name: str | None = None, newest: bool = False) -> str:
        """The id of the one model whose css_classes hold `css` (and whose type is `name`, if given); with newest=True
        the one the server made last (a plot rebuilt by the server leaves its old models in this client's table)."""
        hits = [i for i, m in self.models.items() if css in (m["attributes"].get("css_classes") or [])
                and (name is None or (m["name"] or "").split(".")[-1] == name)]
        if newest and hits:
            return max(hits, key=lambda i: int(re.sub(r"\D", "", i) or 0))
        if len(hits) != 1:
            raise LookupError(f"{len(hits)} models with css class {css!r}" + (f" and type {name}" if name else ""))
        return hits[0]

    def attr(self, model: str, name: str):
        value = self.models[model]["attributes"].get(name)
        if isinstance(value, dict) and set(value) == {"id"}:
            return self.models.get(value["id"])
        return value

    def refs(self, model: str, attr: str) -> list[str]:
        """The ids of the models an attribute refers to, in order (e.g. a layout's or a FlexBox's children)."""
        found: list[str] = []

        def visit(value) -> None:
            if isinstance(value, dict):
                if "id" in value and (value.get("type") == "object" or set(value) == {"id"}):
                    found.append(value["id"])
                    return
                for item in value.values():
                    visit(item)
            elif isinstance(value, list):
                for item in value:
                    visit(item)

        visit(self.models[model]["attributes"].get(attr))
        return found

    def with_class(self, css: str, within: list[str]) -> list[str]:
        return [i for i in within if css in (self.models[i]["attributes"].get("css_classes") or [])]

    def data_of(self, model: str) -> str:
        """The id of a Panel ESM component's data model (where its parameters, e.g. ClickableHTML's `html`, live)."""
        return self.models[model]["attributes"]["data"]["id"]

    # ------------------------------------------------------------------------------------------------ interactions

    def expect(self, predicate: Callable[[Change], bool]) -> asyncio.Future:
        """A future for the first change from now on that satisfies `predicate` (set up before sending)."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        future.add_done_callback(lambda f: self._waiters.remove(next(w for w in self._waiters if w[1] is f)))
        return future

    async def set(self, model: str, attr: str, new) -> None:
        """What a widget sends when the user changes it."""
        self.models[model]["attributes"][attr] = new
        await self._send("PATCH-DOC", {"events": [{"kind": "ModelChanged", "model": {"id": model}, "attr": attr, "new": new}]})

    async def event(self, name: str, model: str, **values) -> None:
        """A UI event (`button_click`, `esm_event` with data=…) on a model, as BokehJS sends it."""
        entries = [["model", {"id": model}]] + [[k, v] for k, v in values.items()]
        await self._send_event({"type": "event", "name": name, "values": {"type": "map", "entries": entries}})

    async def _send_event(self, rep: dict) -> None:
        await self._send("PATCH-DOC", {"events": [{"kind": "MessageSent", "msg_type": "bokeh_event", "msg_data": rep}]})

    async def timed(self, send, predicate: Callable[[Change], bool], timeout: float = 60) -> float:
        """Seconds from sending to the first change satisfying `predicate`."""
        future = self.expect(predicate)
        started = time.perf_counter()
        await send
        change = await asyncio.wait_for(future, timeout)
        return change.at - started
