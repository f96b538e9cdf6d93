"""The sample grid: paging over the whole selection, cards whose cluster and labels match the project's files, images
per mode and sampling, and bad state shown as a message."""

from __future__ import annotations

import base64
import io
import re
from html import unescape

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from relaylab.data.project import open_project
from relaylab.errors import RelaylabError
from relaylab.explore.data import ProjectData
from relaylab.explore.grid import SampleGrid
from relaylab.explore.render import render_rgba
from relaylab.explore.state import ViewState

from .conftest import run_cli

ANALYSIS, CATEGORY, CLUSTERING = "spectral_analysis", "n00000001", "hdbscan"


def grid_of(path, **values) -> SampleGrid:
    """A grid of the project at `path` over a fresh ViewState holding `values` (its fields, e.g. selection, mode)."""
    return SampleGrid(ProjectData.of(path), ViewState().apply(values))


def cards(grid: SampleGrid) -> list[dict]:
    """Each card's attributes and texts, read from the HTML the browser gets."""
    out = []
    for match in re.finditer(r'<div class="rl-card[^"]*" (.*?)</div></div>', grid._cards.html):
        body = match.group(0)
        attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body))
        img = re.search(r'<img src="([^"]*)"[^>]*style="image-rendering: ([a-z]+)"', body)
        out.append({**{k: unescape(v) for k, v in attrs.items()}, "src": unescape(img.group(1)) if img else None,
                    "rendering": img.group(2) if img else None, "html": body})
    return out


def errors(grid: SampleGrid) -> list[str]:
    return [unescape(m) for m in re.findall(r'<div class="rl-grid-error">(.*?)</div>', grid._cards.html)]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A ViRelAy project (YAML + HDF5) and the same converted to a relaylab store."""
    from relaylab.data.synthetic import Variant, write_virelay_project

    folder = tmp_path_factory.mktemp("grid")
    path = write_virelay_project(folder / "virelay", Variant(n_samples=60, height=16, width=16, attribution_files=2))
    converted = run_cli("convert", "-q", path, folder / "p.zarr")
    assert converted.returncode == 0, converted.stderr
    return path


def expected_from_files(yaml_path, samples):
    """True label, predicted label and hdbscan cluster of each sample, read with h5py straight from ViRelAy's files."""
    folder = yaml_path.parent
    with h5py.File(folder / "dataset.h5") as h5:
        labels = h5["label"][:]
    predicted = {}
    for part in (0, 1):
        with h5py.File(folder / f"attribution-{part}.h5") as h5:
            for index, row in zip(h5["index"][:], h5["prediction"][:]):
                predicted[int(index)] = int(row.argmax())
    with h5py.File(folder / "analysis-0.h5") as h5:
        members = h5[CATEGORY]["index"][:]
        clusters = dict(zip(members.tolist(), h5[CATEGORY]["cluster"][CLUSTERING][:].tolist()))
    return {s: {"label": f"class {labels[s]}", "prediction": f"class {predicted[s]}", "cluster": str(clusters[s]) if s in clusters else ""}
            for s in samples}


def test_paging_shows_every_selected_sample(project):
    grid = grid_of(project, selection=list(range(45)), page=1, mode="input")
    assert [int(c["sample"]) for c in cards(grid)] == list(range(20, 40))
    assert "page 2 of 3" in grid._status.object and "45 selected" in grid._status.object
    grid._next.clicks += 1                                  # the pager turns the state's page
    assert grid.state.page == 2 and [int(c["sample"]) for c in cards(grid)] == list(range(40, 45))
    assert grid._next.disabled and not grid._previous.disabled
    grid.state.page = 9                                     # beyond the end: shown as the last page
    assert "page 3 of 3" in grid._status.object and len(cards(grid)) == 5
    grid._previous.clicks += 1
    assert grid.state.page == 1
    grid.state.apply({"page_size": 50, "page": 0})
    assert len(cards(grid)) == 45 and "page 1 of 1" in grid._status.object
    grid.state.selection = []
    assert cards(grid) == [] and "0 selected" in grid._status.object and "no samples selected" in grid._cards.html


@pytest.mark.parametrize("store", [False, True], ids=["virelay-yaml", "zarr-store"])
def test_cards_show_cluster_and_labels_of_the_project(project, store):
    samples = [58, 1, 4, 7, 2, 10, 13, 40, 31]             # members of category 1 (s % 3 == 1) and others
    path = project.parent.parent / "p.zarr" if store else project
    grid = grid_of(path, selection=samples, mode="attribution", analysis=ANALYSIS, category=CATEGORY, clustering=CLUSTERING)
    expected = expected_from_files(project, samples)
    shown = cards(grid)
    assert [int(c["sample"]) for c in shown] == samples
    for card in shown:
        want = expected[int(card["sample"])]
        assert (card["label"], card["prediction"], card["cluster"]) == (want["label"], want["prediction"], want["cluster"]), card["html"]
        assert f"true: {want['label']}" in card["html"] and f"predicted: {want['prediction']}" in card["html"]
        text = "not in category" if want["cluster"] == "" else "noise" if want["cluster"] == "-1" else f"cluster {want['cluster']}"
        assert f'<span class="rl-cluster">{text}</span>' in card["html"]
    assert any(c["cluster"] == "-1" for c in shown) and any(c["cluster"] == "" for c in shown)


def test_card_images_follow_mode_colour_map_and_sampling(project):
    grid = grid_of(project, selection=[5, 6], mode="overlay", colormap="seismic")
    first = cards(grid)[0]
    assert first["src"].startswith("data:image/png;base64,")  # no server in this process: data URIs of the same PNGs
    png = base64.b64decode(first["src"].split(",", 1)[1])
    with open_project(project) as p:
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), render_rgba(p, 5, "overlay", "seismic"))
    assert first["rendering"] == "pixelated"                 # 16×16 shown at 150 px: ViRelAy's automatic rule
    grid.state.sampling = "smooth"
    assert cards(grid)[0]["rendering"] == "auto"
    grid.state.sampling = "automatic"
    grid.display_px = 16
    assert cards(grid)[0]["rendering"] == "pixelated"
    grid.display_px = 15                                     # shown smaller than stored: smooth
    assert cards(grid)[0]["rendering"] == "auto"


def test_samples_without_attribution_get_a_placeholder_not_a_broken_image(project, tmp_path):
    spec = yaml.safe_load(project.read_text())
    spec["project"]["attributions"]["sources"] = ["attribution-0.h5"]
    partial = project.parent / "partial.yaml"
    partial.write_text(yaml.safe_dump(spec))
    with h5py.File(project.parent / "attribution-0.h5") as h5:
        attributed = set(h5["index"][:].tolist())
    missing = next(s for s in range(60) if s not in attributed)
    present = next(iter(sorted(attributed)))
    grid = grid_of(partial, selection=[missing, present], mode="attribution")
    by_sample = {int(c["sample"]): c for c in cards(grid)}
    assert by_sample[missing]["src"] is None and "no attribution in" in by_sample[missing]["html"]
    assert by_sample[missing]["prediction"] == "—"
    assert by_sample[present]["src"] is not None
    grid.state.mode = "input"                                # input mode needs no attribution
    assert all(c["src"] is not None for c in cards(grid))


def test_bad_state_is_a_message_in_the_page(project):
    grid = grid_of(project, selection=[3, 60, -1, 4], mode="attribution", colormap="jet")
    assert [int(c["sample"]) for c in cards(grid)] == [3, 4]
    assert "expected sample indices in 0..59 (found 60, -1 on this page)" in errors(grid)[0]
    with pytest.raises(ValueError, match="viridis"):         # the state takes no colour map it cannot draw
        grid.state.colormap = "viridis"
    grid.state.apply({"selection": [3], "analysis": ANALYSIS, "category": CATEGORY, "clustering": "kmeans-99"})
    assert "a clustering of the category" in errors(grid)[0] and len(cards(grid)) == 1
    grid.state.clustering = CLUSTERING
    grid.state.attribution = "nope"
    assert cards(grid) == [] and "an attribution set" in errors(grid)[0]
    assert "Traceback" not in grid._cards.html
    with pytest.raises(RelaylabError, match="no such file"):
        ProjectData.of(project.parent / "nothing.yaml")


def test_grid_in_a_browser_loads_images_from_the_route_and_pages(project):
    """A real Panel server and headless chromium: the cards' images come from /relaylab/img/ and decode; the pager works."""
    import shutil

    import panel as pn

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium")
    from .test_images import free_port, wait_for

    port = free_port()
    app = lambda: grid_of(project, selection=list(range(0, 60, 2)), mode="overlay", colormap="jet", analysis=ANALYSIS,
                          category=CATEGORY, clustering=CLUSTERING)
    server = pn.serve({"grid": app}, port=port, address="127.0.0.1", threaded=True, show=False, start=True)
    try:
        wait_for(port, "/grid")
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/grid")
            page.locator(".rl-card > img").first.wait_for(timeout=30_000)
            loaded = page.locator(".rl-card > img").evaluate_all(
                "imgs => Promise.all(imgs.map(i => i.decode().then(() => [i.getAttribute('src'), i.naturalWidth, getComputedStyle(i).imageRendering])))")
            assert len(loaded) == 20
            assert all(src.startswith("/relaylab/img/") and width == 16 and rendering == "pixelated" for src, width, rendering in loaded)
            samples = page.locator(".rl-card").evaluate_all("cards => cards.map(c => Number(c.dataset.sample))")
            assert samples == list(range(0, 40, 2))
            page.locator(".rl-page-next button").click()
            page.locator('.rl-card[data-sample="40"]').wait_for(timeout=30_000)
            assert page.locator(".rl-card").evaluate_all("cards => cards.map(c => Number(c.dataset.sample))") == list(range(40, 60, 2))
            assert "page 2 of 2" in page.locator(".rl-pager").inner_text()
            browser.close()
    finally:
        server.stop()
