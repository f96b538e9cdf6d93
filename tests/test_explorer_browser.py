"""The explorer in a real browser: `panel serve apps/explorer.py` in a child process, driven by headless chromium.

Two projects are served side by side: a ViRelAy-format fixture (YAML + HDF5, with a second analysis method) and a
relaylab Zarr store converted from it. Screenshots go to $RELAYLAB_TEST_ARTIFACTS (default: pytest's temp folder).
Timings are printed (run with -s to see them); they are measurements, not assertions.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from relaylab.data.convert import convert_to_zarr
from relaylab.data.project import open_project
from relaylab.data.schema import schema_problems
from relaylab.data import store as zstore
from relaylab.data.store import store_metadata, update_store_metadata
from relaylab.data.synthetic import Variant, images_and_labels, write_analysis_files, write_virelay_project

playwright = pytest.importorskip("playwright.sync_api", reason="playwright's Python client is not installed (pip install relaylab[test])")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
expect = playwright.expect

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES = 90
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)  # not 5 s: on a loaded 2-core machine a round trip to the server can take longer


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> tuple[Path, Path]:
    """A ViRelAy project with two analysis methods, and the Zarr store converted from it (renamed, as names must differ)."""
    root = tmp_path_factory.mktemp("explorer")
    variant = Variant(n_samples=N_SAMPLES, seed=0)
    yaml_path = write_virelay_project(root / "virelay", variant, name="virelay-fixture")
    _, labels = images_and_labels(variant)
    (root / "virelay" / "second").mkdir()
    files = write_analysis_files(root / "virelay" / "second", labels, np.zeros((N_SAMPLES, 1)), Variant(n_samples=N_SAMPLES, seed=5))
    document = yaml.safe_load(yaml_path.read_text())
    document["project"]["analyses"].append({"analysis_method": "second_analysis", "sources": [f"second/{f}" for f in files]})
    yaml_path.write_text(yaml.safe_dump(document, sort_keys=False))
    store = convert_to_zarr(yaml_path, root / "store.zarr", progress=False)
    update_store_metadata(store, project={**store_metadata(store)["project"], "name": "zarr-fixture"})
    return yaml_path, store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def serve(args: list[str], artifacts: Path, log_name: str, env: dict | None = None):
    """`panel serve apps/explorer.py --warm [--args ...]` on a free port: (process, URL, output lines) once it
    prints its address."""
    port = free_port()
    panel = Path(sys.executable).with_name("panel")
    command = [str(panel), "serve", "apps/explorer.py", "--port", str(port), "--warm", *(["--args", *args] if args else [])]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "Bokeh app running at" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300):
        process.kill()
        pytest.fail("the explorer did not start:\n" + "".join(lines[-30:]))
    print(f"\nserver ready {time.perf_counter() - started:.1f} s after start (warm-up included)")
    return process, f"http://localhost:{port}/explorer", lines


def stop(process, lines: list[str], artifacts: Path, log_name: str) -> None:
    """Stop the server; fail on any traceback it logged."""
    process.terminate()
    process.wait(timeout=20)
    (artifacts / log_name).write_text("".join(lines))
    # tornado reports a browser that closed while the server was still writing to it; that is no error of the app
    closed = ("WebSocketClosedError", "StreamClosedError")
    errors = [block for block in re.split(r"(?=Traceback \(most recent call last\))", "".join(lines))[1:]
              if not any(word in block.split("\n\n")[0] for word in closed)]
    assert not errors, "the server logged errors:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def server(projects, artifacts):
    process, url, lines = serve([str(p) for p in projects], artifacts, "server.log")
    yield url
    stop(process, lines, artifacts, "server.log")


@pytest.fixture(scope="module")
def demo_server(demo_store, artifacts):
    """The app with no projects given, so it opens the demo: the session's (conftest's `demo_store`), found by
    `ensure_demo` through $RELAYLAB_DEMO_DIR, so the server builds nothing."""
    process, url, lines = serve([], artifacts, "demo-server.log", env={"RELAYLAB_DEMO_DIR": str(demo_store.parent)})
    yield url, demo_store
    stop(process, lines, artifacts, "demo-server.log")


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RELAYLAB_TEST_ARTIFACTS") or tmp_path_factory.getbasetemp() / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


# ------------------------------------------------------------------------------------------------ helpers


def open_explorer(page, url: str) -> float:
    """Load the page until the embedding is drawn; the seconds it took."""
    started = time.perf_counter()
    page.goto(url)
    page.locator(".rl-embedding-plot canvas").first.wait_for(state="attached")  # drawn, if maybe in a hidden tab
    page.locator(".rl-selected").first.wait_for(state="attached")
    return time.perf_counter() - started


def selected(page) -> int:
    return int(page.locator(".rl-selected").first.get_attribute("data-count"))


def card_samples(page) -> list[int]:
    return [int(card.get_attribute("data-sample")) for card in page.locator(".rl-card").all()]


def wait_cards(page, count: int) -> list[int]:
    expect(page.locator(".rl-card")).to_have_count(count)
    return card_samples(page)


def share_query(page) -> dict[str, str]:
    link = page.locator(".rl-share input").input_value()
    return dict(pair.split("=", 1) for pair in link.split("?", 1)[1].split("&"))


def plot_box(page) -> dict:
    canvases = [c.bounding_box() for c in page.locator(".rl-embedding-plot canvas").all()]
    return max(canvases, key=lambda b: b["width"] * b["height"])


def click_cluster(page, index: int = 0) -> int:
    """Click the index-th "Cluster k (size)" button; the size it names."""
    button = page.locator(".rl-cluster-button button:visible").nth(index)
    size = int(re.search(r"\((\d+)\)", button.inner_text()).group(1))
    button.click()
    expect(page.locator(".rl-selected").first).to_have_attribute("data-count", str(size))
    return size


def image_bytes(page, base: str) -> tuple[str, bytes]:
    src = page.locator(".rl-card img").first.get_attribute("src")
    response = page.request.get(base + src if src.startswith("/") else src)
    assert response.status == 200, response.text()
    return src, response.body()


def origin(url: str) -> str:
    return url.split("/explorer")[0]


def choose_category(page, key: str) -> None:
    """Pick a category by its key; the list shows names and scores around it (e.g. "class 2 (n00000002) · 0.41")."""
    value = page.locator(".rl-category option").filter(has_text=f"({key})").first.get_attribute("value")
    page.locator(".rl-category select").select_option(value=value)


def figure_pixels(page, kind: str, sample: int) -> np.ndarray:
    """The RGBA pixels of one figure of the sample inspector (its PNG data URI, decoded)."""
    from relaylab.explore.layers import png_array

    figure = page.locator(f'.rl-explanation[data-kind="{kind}"][data-sample="{sample}"] img').first
    return png_array(base64.b64decode(figure.get_attribute("src").split(",", 1)[1]))


FOUND_SINCE_CLICK_JS = """(selector) => {
  // milliseconds since window.__clickAt once `selector` is in the page (shadow roots included), else false
  const roots = [document]
  while (roots.length) {
    const root = roots.pop()
    if (root.querySelector(selector)) return performance.now() - window.__clickAt
    for (const el of root.querySelectorAll("*")) if (el.shadowRoot) roots.push(el.shadowRoot)
  }
  return false
}"""


def click_until(page, target, selector: str) -> float:
    """Click `target` and return the milliseconds until `selector` appears, measured in the page every animation frame
    (playwright's own waits poll at 100 ms to 1 s intervals, which would swamp a figure of ~50 ms)."""
    box = target.bounding_box()
    page.evaluate("() => { window.__clickAt = performance.now() }")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 10)
    return page.wait_for_function(FOUND_SINCE_CLICK_JS, arg=selector, polling="raf").json_value()


def open_tab(page, name: str) -> None:
    """Click a main tab's header until it is the active one. Right after the server switched tabs (a card click), the
    first click on a header is sometimes lost in headless chromium (the server never hears of it; seen only with
    playwright's one-step mouse moves); the retry keeps the tests about what they test."""
    header = page.locator(".rl-main-tabs .bk-tab", has_text=name)
    for _ in range(3):
        header.click()
        try:
            expect(header).to_have_class(re.compile(r"\bbk-active\b"), timeout=3000)
            return
        except AssertionError:
            continue
    expect(header).to_have_class(re.compile(r"\bbk-active\b"))


# ------------------------------------------------------------------------------------------------ tests


def test_tabs_analysis_and_category(page, server, artifacts):
    seconds = open_explorer(page, server)
    print(f"page load {seconds:.2f} s")
    expect(page.locator(".rl-footer")).to_have_attribute("data-project", "virelay-fixture")
    page.locator(".bk-tab", has_text="zarr-fixture").click()
    expect(page.locator(".rl-footer")).to_have_attribute("data-project", "zarr-fixture")
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"project=zarr-fixture"))
    page.locator(".rl-analysis select").select_option(label="second-analysis")
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"analysisMethod=second-analysis"))
    choose_category(page, "n00000002")
    # the last category has no t-SNE: the view falls back to the spectral embedding and offers its dimensions
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"analysisCategory=n00000002&embedding=spectral"))
    expect(page.locator(".rl-x-dim select")).to_be_visible()
    page.locator(".rl-y-dim select").select_option(label="5")
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"secondEmbeddingDimension=5"))
    page.screenshot(path=artifacts / "tabs-analysis.png", full_page=True)


def test_box_select_then_hover_and_click_a_point(page, server, projects, artifacts):
    """Drag a box: the grid holds exactly the samples whose coordinates lie in the box the server reports. The drag
    also gives the pixel ↔ data mapping, used to hover over one of those points and click it."""
    open_explorer(page, server)
    box = plot_box(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    (ax, ay), (bx, by) = (cx - 150, cy - 120), (cx + 60, cy + 90)
    page.mouse.move(ax, ay)
    page.mouse.down()
    page.mouse.move(bx, by, steps=8)
    started = time.perf_counter()
    page.mouse.up()
    summary = page.locator('.rl-selected[data-geometry^="box"]').first
    summary.wait_for()
    count = int(summary.get_attribute("data-count"))
    cards = wait_cards(page, min(count, 20))
    print(f"box select round trip {time.perf_counter() - started:.2f} s ({count} samples)")
    x0, y0, x1, y1 = map(float, summary.get_attribute("data-geometry").split(" ", 1)[1].split(","))
    query = share_query(page)
    with open_project(projects[0]) as project:
        node = project.analyses["spectral_analysis"][query["analysisCategory"]]
        xy = np.asarray(node["embedding"][query["embedding"]]["embedding"].values)
        members = np.asarray(node["index"].values)
    inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    expected = sorted(members[inside].tolist())
    assert 0 < count < len(members), "the dragged box should hold some, not all, points"
    assert count == len(expected) and cards == expected[:20]
    page.screenshot(path=artifacts / "box-select.png", full_page=True)

    # the point inside the box farthest from its neighbours, at its pixel position
    px = ax + (xy[:, 0] - x0) / (x1 - x0) * (bx - ax)
    py = ay + (y1 - xy[:, 1]) / (y1 - y0) * (by - ay)
    gaps = np.hypot(px[:, None] - px[None], py[:, None] - py[None]) + np.eye(len(px)) * 1e9
    pick = max(np.flatnonzero(inside), key=lambda i: gaps[i].min())
    sample = int(members[pick])
    page.mouse.move(float(px[pick]) + 1, float(py[pick]) + 1, steps=4)
    hover = page.locator(f'.rl-hover-sample[data-sample="{sample}"]').first
    hover.wait_for()
    assert hover.locator("img").count() == 1
    with open_project(projects[0]) as project:  # the preview's top-5: the stored outputs of the analysed set
        scores = next(iter(project.attributions.values()))["prediction"].sel(sample=sample).values
        names = dict(zip(project.label_map["class"].values.tolist(), map(str, project.label_map["name"].values)))
    assert hover.locator(".rl-top5").inner_text() == ", ".join(names[int(c)] for c in np.argsort(-scores, kind="stable")[:5])
    page.mouse.click(float(px[pick]), float(py[pick]))
    expect(page.locator(".rl-selected").first).to_have_attribute("data-geometry", f"click {sample}")
    assert wait_cards(page, 1) == [sample]
    page.locator(f'.rl-explanation[data-kind="input"][data-sample="{sample}"]').wait_for()  # the click opened the inspector


def test_display_mode_and_colour_map_change_the_images(page, server, artifacts):
    open_explorer(page, server)
    click_cluster(page)
    page.locator(".rl-mode button", has_text=re.compile(r"^input$")).click()
    expect(page.locator(".rl-card img").first).to_have_attribute("src", re.compile(r"mode=input"))
    _, input_png = image_bytes(page, origin(server))
    page.locator(".rl-mode button", has_text=re.compile(r"^attribution$")).click()
    expect(page.locator(".rl-card img").first).to_have_attribute("src", re.compile(r"mode=attribution.*colormap=black-fire-red"))
    _, fire_png = image_bytes(page, origin(server))
    page.locator(".rl-colormap select").select_option("coldnhot")
    expect(page.locator(".rl-card img").first).to_have_attribute("src", re.compile(r"colormap=coldnhot"))
    _, cold_png = image_bytes(page, origin(server))
    assert len({input_png, fire_png, cold_png}) == 3
    assert all(png.startswith(b"\x89PNG") for png in (input_png, fire_png, cold_png))
    page.screenshot(path=artifacts / "attribution-coldnhot.png", full_page=True)


def test_export_reload_import_restores_the_selection(page, server, tmp_path):
    open_explorer(page, server)
    page.locator(".bk-tab", has_text="zarr-fixture").click()
    size = click_cluster(page, 1)
    cards = wait_cards(page, min(size, 20))
    with page.expect_download() as download:
        page.locator(".rl-export").locator("button, a").first.click()
    saved = tmp_path / "state.json"
    download.value.save_as(saved)
    document = json.loads(saved.read_text())
    assert schema_problems("viewer-state", document, str(saved)) == []
    assert document["projectName"] == "zarr-fixture" and len(document["selectedEmbeddingVectorsIndices"]) == size
    open_explorer(page, server)  # no query: the default view, nothing selected
    assert selected(page) == 0
    page.locator(".rl-import input[type=file]").set_input_files(saved)
    expect(page.locator(".rl-selected").first).to_have_attribute("data-count", str(size))
    expect(page.locator(".rl-footer")).to_have_attribute("data-project", "zarr-fixture")
    assert wait_cards(page, min(size, 20)) == cards


def test_share_link_restores_the_view_in_another_session(page, browser, server, artifacts):
    open_explorer(page, server)
    page.locator(".bk-tab", has_text="zarr-fixture").click()
    choose_category(page, "n00000001")
    page.locator(".rl-color-by select").select_option("correct")
    # the cluster buttons are rebuilt with the view: wait for it before reading one
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"analysisCategory=n00000001.*colorBy=correct"))
    size = click_cluster(page, 2)
    page.locator(".rl-colormap select").select_option("seismic")
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"colorMap=seismic"))
    link, cards = page.locator(".rl-share input").input_value(), wait_cards(page, min(size, 20))
    other = browser.new_context(viewport={"width": 1400, "height": 1500}).new_page()
    other.set_default_timeout(TIMEOUT_MS)
    seconds = open_explorer(other, link)
    print(f"share link load {seconds:.2f} s")
    expect(other.locator(".rl-footer")).to_have_attribute("data-project", "zarr-fixture")
    assert selected(other) == size and wait_cards(other, min(size, 20)) == cards
    assert other.locator(".rl-share input").input_value() == link
    expect(other.locator(".rl-card img").first).to_have_attribute("src", re.compile(r"colormap=seismic"))
    other.screenshot(path=artifacts / "share-link.png", full_page=True)
    # the two sessions are independent: clearing one leaves the other as it was
    other.locator(".rl-clear button").click()
    expect(other.locator(".rl-selected").first).to_have_attribute("data-count", "0")
    assert selected(page) == size
    other.context.close()


@pytest.mark.parametrize("query, words", [
    ("embeddingVectors=3,99999", ["99999", "embeddingVectors"]),
    ("colorMap=no-such-map", ["no-such-map", "colorMap"]),
    ("analysisMethod=missing-analysis", ["missing-analysis", "analysisMethod"]),
])
def test_bad_link_shows_a_message_and_a_working_page(page, server, artifacts, query, words):
    open_explorer(page, f"{server}?{query}")
    alert = page.locator(".rl-alert").first
    expect(alert).to_be_visible()
    text = " ".join(page.locator(".rl-alert li").all_inner_texts())
    assert all(word in text for word in words) and "Traceback" not in text, text
    click_cluster(page)  # the session is alive and shows the default view
    if query.startswith("embeddingVectors"):
        page.screenshot(path=artifacts / "bad-link.png", full_page=True)


def test_demo_artifact_colouring_and_the_layer_view_follow_the_link(page, demo_server, artifacts):
    """The demo (opened because no project is given): colour the artifact class by the planted artifact, and a
    link's `sample` and `layer` open that sample and layer in the per-layer inspector."""
    url, store = demo_server
    category, members, artifact = artifact_facts(store)
    marked = int(artifact[members].sum())
    sample = int(members[np.flatnonzero(artifact[members])[0]])
    seconds = open_explorer(page, f"{url}?analysisCategory={category}&colorBy=artifact&sample={sample}&layer=features.3&tab=layers")
    print(f"demo page load {seconds:.2f} s")
    legend = " ".join(page.locator(".rl-legend-item").all_inner_texts())
    assert f"artifact ({marked})" in legend and f"no artifact ({len(members) - marked})" in legend
    expect(page.get_by_text(f"Sample {sample}", exact=False).first).to_be_visible(timeout=60_000)
    expect(page.locator(".rl-channel").first).to_be_visible(timeout=60_000)  # features.3 is a conv layer: channel maps
    page.screenshot(path=artifacts / "demo-layers.png", full_page=True)


# the demo's per-layer inspector, picked by mouse clicks


FIGURE_ROWS_JS = """([glyph, column, title]) => {
  // The first Bokeh figure (title containing `title`) with a `glyph` renderer whose data has `column`: its title and
  // rows (every data column, plus cx/cy: the centre of a point or box in viewport pixels, from the figure's own scales).
  for (const view of Bokeh.index.all_views()) {
    if (!view.frame || !view.renderer_views || !view.canvas_view) continue
    const text = view.model.title ? view.model.title.text : ""
    if (title && !text.includes(title)) continue
    for (const [model] of view.renderer_views) {
      if (!model.data_source || !model.glyph || model.glyph.type !== glyph) continue
      const data = model.data_source.data
      if (!(column in data)) continue
      view.canvas_view.el.scrollIntoView({block: "center"})
      const canvas = view.canvas_view.el.getBoundingClientRect()
      const {x_scale, y_scale} = view.frame
      const rows = []
      for (let i = 0; i < model.data_source.get_length(); i++) {
        const row = {}
        for (const [key, values] of Object.entries(data)) row[key] = typeof values[i] === "number" || typeof values[i] === "string" ? values[i] : null
        const [x, y] = "left" in data ? [(data.left[i] + data.right[i]) / 2, (data.bottom[i] + data.top[i]) / 2]
                     : "x" in data && "y" in data ? [data.x[i], data.y[i]] : [null, null]
        row.cx = x === null ? null : canvas.x + x_scale.compute(x)
        row.cy = y === null ? null : canvas.y + y_scale.compute(y)
        rows.push(row)
      }
      return {title: text, rows}
    }
  }
  return null
}"""


def figure_rows(page, glyph: str, column: str, title: str = "") -> dict:
    """Rows of a Bokeh figure's renderer as the browser holds them (see FIGURE_ROWS_JS); waits until it is drawn and
    its layout has settled (two reads 100 ms apart agree), so the pixel positions are where a click lands."""
    page.wait_for_function(f"() => ({FIGURE_ROWS_JS})({json.dumps([glyph, column, title])}) !== null")
    rows = page.evaluate(FIGURE_ROWS_JS, [glyph, column, title])
    for _ in range(50):
        page.wait_for_timeout(100)
        rows, before = page.evaluate(FIGURE_ROWS_JS, [glyph, column, title]), rows
        if rows == before:
            return rows
    pytest.fail(f"the {glyph} plot '{rows['title']}' kept moving")


def picked_box(page) -> str:
    """The layer outlined in the model diagram (its box has the thickest line)."""
    rows = figure_rows(page, "Quad", "name")["rows"]
    return max(rows, key=lambda row: row["line_width"])["name"]


def shown_pngs(page) -> list[np.ndarray]:
    """The inspector's PNG panes (sample image, CAM, CAM overlay, LRP), decoded, in page order; channel thumbnails excluded."""
    from relaylab.explore.layers import png_array

    sources = [img.get_attribute("src") for img in page.locator('img[src^="data:image/png"]').all()
               if not img.evaluate("el => el.closest('.rl-channel') !== null")]
    return [png_array(base64.b64decode(src.split(",", 1)[1])) for src in sources]


def varied(image: np.ndarray) -> bool:
    """More than one colour: not a blank heatmap."""
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 1


def test_demo_click_a_layer_and_a_sample_shows_the_per_layer_panels(page, demo_server, artifacts):
    """The issue's acceptance: click a layer box in the model diagram, then a point of that layer's activation
    embedding; the picked sample's image, top-10 predictions, CAM/LRP heatmaps and channel thumbnails appear. Click
    positions come from the plots' own data and scales in the browser; what is shown is checked against the store."""
    url, store = demo_server
    with open_project(store) as project:
        layers = project.metadata["store"]["model"]["layers"]
        analysed = [x for x in layers if f"activation-{x['name']}" in project.analyses and len(x["output_shape"]) == 3]
        inputs, labels = project.inputs["input"].values, project.inputs["label"].values
        logits = project.attributions["lrp"]["prediction"].values
        names = dict(zip(project.label_map["class"].values.tolist(), map(str, project.label_map["name"].values)))
    open_explorer(page, url)
    open_tab(page, "Layers")
    first = picked_box(page)
    target = next(x for x in analysed if x["name"] != first)  # a conv layer with an activation embedding, not the one shown
    page.screenshot(path=artifacts / "demo-inspector-1-loaded.png", full_page=True)

    box = next(row for row in figure_rows(page, "Quad", "name")["rows"] if row["name"] == target["name"])
    started = time.perf_counter()
    page.mouse.click(box["cx"], box["cy"])
    expect(page.locator(".rl-share input")).to_have_value(re.compile(rf"[?&]layer={re.escape(target['name'])}(&|$)"))
    page.wait_for_function(f"() => ({FIGURE_ROWS_JS})(['Scatter', 'sample', 'activations of {target['name']}']) !== null")
    print(f"layer click → its embedding {time.perf_counter() - started:.2f} s")
    assert picked_box(page) == target["name"]
    embedding = figure_rows(page, "Scatter", "sample", f"activations of {target['name']}")
    assert embedding["title"] == f"tsne of the activations of {target['name']}" and len(embedding["rows"]) == len(labels)
    page.screenshot(path=artifacts / "demo-inspector-2-layer.png", full_page=True)

    # the point farthest (in pixels) from its neighbours, so a click there cannot mean another one
    points = np.array([(row["cx"], row["cy"]) for row in embedding["rows"]])
    gaps = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1)) + np.eye(len(points)) * 1e9
    pick = int(gaps.min(axis=1).argmax())
    sample = int(embedding["rows"][pick]["sample"])
    started = time.perf_counter()
    page.mouse.click(*points[pick])
    expect(page.locator(".rl-share input")).to_have_value(re.compile(rf"[?&]sample={sample}(&|$)"))
    channels = page.locator(".rl-channel")
    expect(channels).to_have_count(target["output_shape"][0], timeout=60_000)
    print(f"sample click → channel thumbnails {time.perf_counter() - started:.2f} s")
    page.screenshot(path=artifacts / "demo-inspector-3-sample.png", full_page=True)

    probabilities = np.exp(logits[sample] - logits[sample].max())
    probabilities /= probabilities.sum()
    top = np.argsort(-probabilities, kind="stable")[:10]
    info = page.get_by_text(f"Sample {sample} — true: {names[int(labels[sample])]}")
    expect(info).to_be_visible()
    assert f"predicted: {names[int(top[0])]}" in info.inner_text()
    bars = figure_rows(page, "HBar", "probability", "top-10 predictions")["rows"]
    assert sorted((row["probability"] for row in bars), reverse=True) == pytest.approx(probabilities[top], abs=1e-4)
    assert {row["class"] for row in bars} == {f"{c}: {names[int(c)]}" for c in top}
    numbers = sorted(int(c) for c in channels.evaluate_all("cards => cards.map(card => card.dataset.channel)"))
    assert numbers == list(range(target["output_shape"][0]))
    assert all(src.startswith("data:image/png") for src in channels.locator("img").evaluate_all("imgs => imgs.map(img => img.src)"))
    expect(page.get_by_text(f"{target['name']}: {target['output_shape'][0]} channels of")).to_be_visible()
    expect(page.locator(".rl-channel-legend .rl-scale")).to_have_count(1)  # one colour scale for all thumbnails

    # the sample opens in the sample inspector: its image and every explanation
    page.locator(".rl-open-inspector button").click()
    page.locator(f'.rl-explanation[data-kind="lrp"][data-sample="{sample}"]').wait_for()
    np.testing.assert_array_equal(figure_pixels(page, "input", sample)[..., :3], np.repeat(inputs[sample][0][..., None], 3, axis=2))
    page.screenshot(path=artifacts / "demo-inspector-4-sample-inspector.png", full_page=True)


# ------------------------------------------------------------------------------------------------ second generation: one screen


def artifact_facts(store) -> tuple[str, np.ndarray, np.ndarray]:
    """The demo's planted class (its category key), its members and the artifact flag of every sample."""
    with open_project(store) as project:
        artifact = np.asarray(project.inputs["artifact"].values)
        tree = project.analyses["spectral_analysis"]
        counts = {c: int(artifact[np.asarray(node["index"].values)].sum()) for c, node in tree.children.items()}
        category = max(counts, key=counts.get)
        return category, np.asarray(tree[category]["index"].values), artifact


@pytest.mark.parametrize("width, height", [(1600, 1000), (1280, 800)])
def test_main_workflow_fits_one_screen(browser, demo_server, artifacts, width, height):
    """Pick a category, select a cluster, look at the cards: no page scrolling at 1600 × 1000; at 1280 × 800 the plot
    and the first cards are still side by side inside the window's width."""
    url, _ = demo_server
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        open_explorer(page, url)
        size = click_cluster(page, 1)
        wait_cards(page, min(size, 20))
        page.wait_for_timeout(500)
        page.screenshot(path=artifacts / f"one-screen-{width}x{height}.png")
        plot, card = plot_box(page), page.locator(".rl-card").first.bounding_box()
        assert card["x"] >= plot["x"] + plot["width"] - 40 and card["x"] + card["width"] <= width  # beside the plot, in view
        assert card["y"] < plot["y"] + plot["height"]
        scroll_height = page.evaluate("document.documentElement.scrollHeight")
        print(f"{width}×{height}: page height {scroll_height} px")
        if (width, height) == (1600, 1000):
            assert scroll_height <= height
    finally:
        context.close()


def test_demo_card_click_opens_the_sample_inspector(page, demo_server, artifacts):
    """A click on a card opens the inspector on that sample: its input equals the store's pixels; the stored heatmap,
    the three CAMs, guided backprop, guided Grad-CAM and LRP are all drawn, none blank and none equal to another."""
    url, store = demo_server
    category, members, _ = artifact_facts(store)
    open_explorer(page, f"{url}?analysisCategory={category}")
    wait_cards(page, min(click_cluster(page, 1), 20))
    card = page.locator(".rl-card").nth(1)
    sample = int(card.get_attribute("data-sample"))
    started = time.perf_counter()
    card.click()
    page.locator(f'.rl-explanation[data-kind="lrp"][data-sample="{sample}"]').wait_for()
    print(f"card click → inspector complete {time.perf_counter() - started:.2f} s (first: the model loads)")
    expect(page.locator(".rl-main-tabs .bk-tab.bk-active")).to_have_text("Sample inspector")  # shown, not only rendered
    with open_project(store) as project:
        image = np.asarray(project.inputs["input"].sel(sample=sample).values)
    np.testing.assert_array_equal(figure_pixels(page, "input", sample)[..., :3], np.repeat(image[0][..., None], 3, axis=2))
    kinds = ["stored:lrp", "gradcam", "layercam", "focus_layercam", "guided_backprop", "guided_gradcam", "lrp"]
    shown = {kind: figure_pixels(page, kind, sample) for kind in kinds}
    # the stored set is LRP epsilon_plus_flat of the true label: for a correctly predicted sample it is the live LRP
    same = {("stored:lrp", "lrp")}
    for i, kind in enumerate(kinds):
        assert varied(shown[kind]), kind
        assert all(not np.array_equal(shown[kind], shown[other]) for other in kinds[i + 1:] if (kind, other) not in same), kind
    expect(page.locator(f'.rl-inspect-row[data-sample="{sample}"] .rl-top tr')).to_have_count(10)
    assert share_query(page)["sample"] == str(sample) and share_query(page)["tab"] == "sample"
    page.screenshot(path=artifacts / "sample-inspector.png")
    # a second card, after the first: the explanations of a new sample, timed
    open_tab(page, "Analysis")
    page.wait_for_timeout(1000)  # the tab switch's layout settles (as while a user looks at the cards)
    other = page.locator(".rl-card").nth(2)  # a second card: the whole round trip, timed in the page
    second = int(other.get_attribute("data-sample"))
    ms = click_until(page, other, f'.rl-explanation[data-kind="lrp"][data-sample="{second}"]')
    print(f"card click → inspector complete in the page {ms:.0f} ms (sample {second})")


def test_attribution_set_switch_changes_the_grid(page, demo_server):
    url, _ = demo_server
    open_explorer(page, url)
    wait_cards(page, min(click_cluster(page), 20))
    page.locator(".rl-mode button", has_text=re.compile(r"^attribution$")).click()
    expect(page.locator(".rl-card img").first).to_have_attribute("src", re.compile(r"attribution=lrp"))  # the analysed set
    base = origin(url)
    src, before = image_bytes(page, base)
    page.locator(".rl-attribution select").select_option(value="saliency")
    expect(page.locator(".rl-card img").first).to_have_attribute("src", re.compile(r"attribution=saliency"))
    after_src, after = image_bytes(page, base)
    assert after_src != src and after != before
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"attribution=saliency"))


def test_suspicion_sort_puts_the_planted_class_first(page, demo_server):
    url, store = demo_server
    category, _, _ = artifact_facts(store)
    open_explorer(page, url)
    first = page.locator(".rl-category option").first
    assert f"({category})" not in first.inner_text()  # class-index order: digit 0 first
    page.locator(".rl-category-order button", has_text="suspicion").click()
    expect(page.locator(".rl-category option").first).to_contain_text(f"({category})")
    scores = [float(text.rsplit("·", 1)[1]) for text in page.locator(".rl-category option").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    expect(page.locator(".rl-share input")).to_have_value(re.compile(r"categoryOrder=suspicion"))


def test_census_rank_and_the_artifact_clusters_prototype_and_mask_beside_its_samples(page, demo_server, artifacts):
    """The demo's census (taken when the demo is built): the planted class is ranked first in the sidebar; selecting
    the cluster holding the marked samples shows its mean and median relevance and a mask lying on the square."""
    from relaylab.analyze.census_job import open_census, ranking
    from relaylab.explore.layers import png_array

    url, store = demo_server
    category, members, artifact = artifact_facts(store)
    rows = ranking(open_census(store, "spectral_analysis"))
    assert rows[0]["category"] == category
    from relaylab.demo import build as demo

    box = demo.ARTIFACT_BOX
    with open_project(store) as project:
        clusters = {name: np.asarray(values.values) for name, values in project.analyses["spectral_analysis"][category]["cluster"].dataset.data_vars.items()}
    open_explorer(page, url)
    choose_category(page, category)
    census = page.locator(".rl-census")
    expect(census).to_have_attribute("data-rank", "1")
    assert float(census.get_attribute("data-score")) == pytest.approx(rows[0]["score"], abs=1e-4)
    # the cluster button whose members are the marked samples (as the census's clustering labels them)
    labels = clusters[rows[0]["clustering"]]
    marked = int(np.bincount(labels[artifact[members]]).argmax())
    page.locator(".rl-clustering select").select_option(label=rows[0]["clustering"])
    size = int((labels == marked).sum())
    button = page.locator(".rl-cluster-button button:visible", has_text=f"Cluster {marked} ({size})")  # this category's buttons
    button.click()
    expect(page.locator(".rl-selected").first).to_have_attribute("data-count", str(size))
    body = page.locator(".rl-prototype-body")
    expect(body).to_have_attribute("data-count", str(size))
    images = {img.get_attribute("data-kind"): png_array(base64.b64decode(img.get_attribute("src").split(",", 1)[1]))
              for img in body.locator("img").all()}
    assert set(images) == {"mean", "median", "estimated"}
    mask = images["estimated"][..., 0] > 127
    y0, y1, x0, x1 = (round(v * mask.shape[0] / demo.SIZE) for v in box)
    assert mask.any() and mask[y0:y1, x0:x1].sum() / mask.sum() >= 0.8, "the mask should lie on the planted square"
    page.screenshot(path=artifacts / "census-prototype.png", full_page=True)


def test_pinned_samples_survive_a_category_switch(page, demo_server, artifacts):
    url, store = demo_server
    category, members, _ = artifact_facts(store)
    open_explorer(page, url)
    wait_cards(page, min(click_cluster(page), 20))
    card = page.locator(".rl-card").first
    pinned = int(card.get_attribute("data-sample"))
    card.click()
    page.locator(".rl-pin button").click()
    expect(page.locator(".rl-share input")).to_have_value(re.compile(rf"pinned={pinned}(&|$)"))
    open_tab(page, "Analysis")
    choose_category(page, category)
    expect(page.locator(".rl-share input")).to_have_value(re.compile(rf"analysisCategory={category}&"))
    click_cluster(page)
    card = page.locator(".rl-card").first
    expect(card).to_have_attribute("data-sample", re.compile("^(" + "|".join(map(str, members)) + ")$"))  # this category's cards
    sample = int(card.get_attribute("data-sample"))
    card.click()
    rows = page.locator(".rl-inspect-row")
    expect(rows).to_have_count(2)
    assert [int(r) for r in rows.evaluate_all("rows => rows.map(r => r.dataset.sample)")] == [sample, pinned]
    page.screenshot(path=artifacts / "pinned.png")
    page.locator(f'.rl-unpin[data-sample="{pinned}"]').click()
    expect(rows).to_have_count(1)


def test_virelay_project_card_click_opens_the_inspector(page, server, projects):
    """A ViRelAy-format project (no model): the inspector shows the input as stored and every attribution set's heatmap."""
    yaml_path, _ = projects
    open_explorer(page, server)
    wait_cards(page, min(click_cluster(page), 20))
    card = page.locator(".rl-card").first
    sample = int(card.get_attribute("data-sample"))
    card.click()
    page.locator(f'.rl-explanation[data-kind="input"][data-sample="{sample}"]').wait_for()
    from relaylab.explore.render import input_rgb

    with open_project(yaml_path) as project:
        np.testing.assert_array_equal(figure_pixels(page, "input", sample)[..., :3], input_rgb(project, sample))
        names = list(project.attributions)
    for name in names:
        assert varied(figure_pixels(page, f"stored:{name}", sample))
    expect(page.locator(".rl-inspector-note")).to_contain_text("records no model")


def test_compare_two_categories_side_by_side(page, demo_server, artifacts):
    """The compare tab from a link: the first category and the planted one, two plots on one row, different points."""
    url, store = demo_server
    category, _, _ = artifact_facts(store)
    open_explorer(page, f"{url}?tab=compare&compareCategory={category}")
    sides = [page.locator(f".rl-compare-{side}") for side in ("left", "right")]
    for side in sides:
        side.locator("canvas").first.wait_for()
    page.wait_for_timeout(500)
    left, right = (side.bounding_box() for side in sides)
    assert right["x"] >= left["x"] + left["width"] - 1 and abs(left["y"] - right["y"]) < 5
    assert sides[0].screenshot() != sides[1].screenshot()
    expect(page.locator(".rl-compare-category select")).to_have_value(re.compile(re.escape(f"({category})")))
    page.screenshot(path=artifacts / "compare.png")


def test_an_on_demand_map_shows_progress_while_other_clicks_are_answered(page, demo_server, artifacts):
    """The layer view's map of the raw inputs at perplexity 90 is not in the store: asking for it shows a progress bar,
    a click on the model diagram is answered while it runs, and the map appears when done (then kept in the store)."""
    url, store = demo_server
    open_explorer(page, f"{url}?tab=layers")
    first = picked_box(page)
    started = time.perf_counter()
    page.locator(".rl-map-source button", has_text="input").click()
    page.locator(".rl-map-perplexity button", has_text="90").click()
    progress = page.locator("progress.rl-map-progress")
    expect(progress).to_be_visible()
    target = next(row for row in figure_rows(page, "Quad", "name")["rows"] if row["name"] != first)
    clicked = time.perf_counter()
    page.mouse.click(target["cx"], target["cy"])
    expect(page.locator(".rl-share input")).to_have_value(re.compile(rf"[?&]layer={re.escape(target['name'])}(&|$)"))
    answered = time.perf_counter() - clicked
    assert progress.is_visible(), "the map was done before the click was answered: nothing shows the page stayed usable"
    page.screenshot(path=artifacts / "map-on-demand-running.png")
    page.wait_for_function(f"() => ({FIGURE_ROWS_JS})(['Scatter', 'sample', 'of the raw inputs']) !== null", timeout=240_000)
    print(f"layer click answered in {answered:.2f} s while the map ran; map done {time.perf_counter() - started:.1f} s after asking")
    expect(progress).to_be_hidden()
    rows = figure_rows(page, "Scatter", "sample", "of the raw inputs")["rows"]
    assert rows and len(rows) == len({row["sample"] for row in rows})
    meta = zstore.read_group_meta(store, "analyses/activation-input--tsne-p90-nall")
    assert meta is not None and meta["status"] == "complete" and meta["perplexity"] == 90
    page.screenshot(path=artifacts / "map-on-demand-done.png")


# the before/after view of a fix


@pytest.fixture(scope="module")
def fixed_demo(demo_store, tmp_path_factory) -> Path:
    """A copy of the demo with a P-ClArC version of its shortcut class, verified (`relaylab fix` as a user runs it)."""
    from relaylab.fix.job import fix, verify

    folder = tmp_path_factory.mktemp("fixed") / "demo"
    folder.mkdir()
    shutil.copytree(demo_store, folder / demo_store.name)
    shutil.copy(demo_store.parent / "demo-cnn.pt", folder)
    store = folder / demo_store.name
    fix(store, category="3", version="pclarc", progress=False)
    verify(store, "pclarc", progress=False)
    return store


def square_share(png_src: str) -> float:
    """Share of a heatmap PNG's brightness inside the demo's artifact square."""
    from relaylab.demo import build as demo
    from relaylab.explore.layers import png_array

    image = png_array(base64.b64decode(png_src.split(",", 1)[1]))[..., :3].astype(np.float64).sum(axis=2)
    y0, y1, x0, x1 = (round(v * image.shape[0] / demo.SIZE) for v in demo.ARTIFACT_BOX)
    return float(image[y0:y1, x0:x1].sum() / image.sum())


def test_before_after_shows_both_models_heatmaps_for_the_same_samples(page, fixed_demo, artifacts):
    """The fix tab: the version's artifact samples, then a selection from a link, each explained by the original and
    the corrected model; the corrected heatmaps have left the square the original's sat on."""
    from relaylab.explain.models import model_versions
    from relaylab.explore.state import encode_ranges

    entry = model_versions(fixed_demo)["pclarc"]
    recorded = entry["selection"]["samples"][:8]
    process, url, lines = serve([str(fixed_demo)], artifacts, "fix-server.log")
    try:
        open_explorer(page, f"{url}?analysisCategory=digit-3&tab=fix")
        expect(page.locator(".rl-ba")).to_have_attribute("data-version", "pclarc", timeout=60_000)
        rows = page.locator(".rl-ba-row")
        expect(rows).to_have_count(len(recorded))
        assert [int(row.get_attribute("data-sample")) for row in rows.all()] == recorded
        shares = {"original": [], "corrected": []}
        for row in rows.all():
            for model in shares:
                image = row.locator(f'img[data-model="{model}"]')
                expect(image).to_have_count(1)
                assert page.evaluate("(img) => img.complete && img.naturalWidth", image.element_handle()) == 32
                shares[model].append(square_share(image.get_attribute("src")))
        assert np.mean(shares["original"]) >= 2 * np.mean(shares["corrected"]), shares
        numbers = page.locator(".rl-ba-numbers").inner_text()
        assert f"{entry['verification']['corrected']['flip_rate']:.3f}" in numbers
        page.screenshot(path=artifacts / "before-after.png", full_page=True)
        # a selection from a share link: the same two heatmaps for exactly those samples
        category, members, artifact = artifact_facts(fixed_demo)
        chosen = sorted(int(s) for s in members[~artifact[members]][:3])
        page.goto(f"{url}?analysisCategory={category}&tab=fix&modelVersion=pclarc&embeddingVectors={encode_ranges(chosen)}")
        expect(page.locator(".rl-ba-row")).to_have_count(3, timeout=60_000)
        assert [int(row.get_attribute("data-sample")) for row in page.locator(".rl-ba-row").all()] == chosen
        for row in page.locator(".rl-ba-row").all():
            assert row.locator('img[data-model="original"]').count() == 1 == row.locator('img[data-model="corrected"]').count()
    finally:
        stop(process, lines, artifacts, "fix-server.log")
