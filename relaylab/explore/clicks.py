"""`ClickableHTML`: an HTML fragment whose `data-action` elements report clicks to Python.

Panel's HTML pane draws markup but tells the server nothing about clicks on it. Cards in the grid and buttons in the
sample inspector need one message per click (also when the same card is clicked twice, which a watched parameter would
not report), so this small ESM component sends `{"action", "sample"}` with `model.send_msg` and Python calls
`on_action(action, sample)`. One delegated listener serves any number of elements, re-rendered or not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import panel as pn
import param

log = logging.getLogger(__name__)


class ClickableHTML(pn.custom.JSComponent):
    """`html` drawn as is; a click on an element (or inside one) with `data-action` and `data-sample` calls
    `on_action(action, sample)` on the server. Hovered elements with `data-action` show a pointer cursor."""

    html = param.String(default="", doc="the markup (trusted: built by relaylab, user text escaped)")

    _esm = """
    export function render({ model, el }) {
      const box = document.createElement("div")
      box.className = "rl-clickable"
      const draw = () => { box.innerHTML = model.html }
      box.addEventListener("click", (event) => {
        const target = event.target.closest("[data-action]")
        if (target && box.contains(target)) {
          model.send_msg({ action: target.dataset.action, sample: Number(target.dataset.sample) })
        }
      })
      draw()
      model.on("html", draw)
      el.append(box)
    }
    """

    _stylesheets = ["[data-action] { cursor: pointer; }"]

    def __init__(self, on_action: Callable[[str, int], None] | None = None, **params):
        super().__init__(**params)
        self.on_action = on_action

    def _handle_msg(self, data) -> None:
        action, sample = data.get("action"), data.get("sample")
        if not isinstance(action, str) or not isinstance(sample, int | float) or sample != sample:
            log.info("ignored a click message %r", data)
            return
        if self.on_action is not None:
            self.on_action(action, int(sample))
