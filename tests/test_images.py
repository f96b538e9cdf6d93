"""Colour maps as ViRelAy and zennit define them, heatmap normalisation, lossless PNGs, ViRelAy's sampling rule, the PNG
cache, the image route on a real Panel server (`pn.serve` in this process and `panel serve` in a child process), and the
explorer served by `relaylab serve` and by `panel serve apps/explorer.py` with $RELAYLAB_PROJECTS or $VIRELAY_PROJECTS."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import panel as pn
import pytest
from PIL import Image

from relaylab.data.project import open_project
from relaylab.errors import RelaylabError
from relaylab.explore import colormaps, render, serve
from relaylab.explore.data import ProjectData

from .helpers import free_port, get, wait_for

VIRELAY_PYTHON = os.environ.get("RELAYLAB_VIRELAY_PYTHON")
REPO = Path(__file__).resolve().parents[1]

# ViRelAy's own functions, run in its environment on values sent as JSON.
VIRELAY_RENDER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from virelay.image_processing import render_heatmap, render_superimposed_heatmap
    request = json.load(sys.stdin)
    x = np.array(request["x"], dtype=np.float64)
    image = np.array(request["image"], dtype=np.uint8)
    a = np.array(request["a"], dtype=np.float64)
    print(json.dumps({name: {"heatmap": render_heatmap(x[None, :], name).reshape(-1, 3).tolist(),
                             "overlay": render_superimposed_heatmap(a, image, name).tolist()} for name in request["names"]}))
""")


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.mark.virelay
@pytest.mark.skipif(not VIRELAY_PYTHON, reason="ViRelAy 0.6.1 environment not set up (RELAYLAB_VIRELAY_PYTHON)")
def test_virelay_colour_maps_and_overlay_equal_virelays_own():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-1, 1, 1001), rng.uniform(-1, 1, 3000), [1.0, -1.0, 0.0]])  # max(x) = 1: ViRelAy's
    a = rng.normal(size=(3, 12, 10))                                                            # max(a) norm = max|a| norm
    a[:, 0, 0] = 10.0
    summed = a.sum(axis=0)
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    request = {"x": x.tolist(), "a": (summed / np.abs(summed).max()).tolist(), "image": image.tolist(), "names": list(colormaps.VIRELAY_COLORMAPS)}
    done = subprocess.run([VIRELAY_PYTHON, "-c", VIRELAY_RENDER], input=json.dumps(request), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    for name in colormaps.VIRELAY_COLORMAPS:
        np.testing.assert_array_equal(colormaps.COLORMAPS[name](x)[:, :3], np.array(theirs[name]["heatmap"]), err_msg=name)
        np.testing.assert_array_equal(render.overlay_rgba(image, a, name)[..., :3], np.array(theirs[name]["overlay"]), err_msg=name)


# Values read off ViRelAy 0.6.1's formulas (image_processing.py) and matplotlib's tables, truncated to uint8 as it does.
VIRELAY_POINTS = [
    ("gray-red", 0.0, (204, 204, 204)), ("gray-red", 1.0, (255, 0, 0)), ("gray-red", -1.0, (0, 0, 255)),
    ("black-green", 0.5, (0, 127, 0)), ("black-green", -0.25, (0, 0, 63)),
    ("black-fire-red", 0.5, (255, 255, 0)), ("black-fire-red", -0.5, (0, 255, 255)), ("black-fire-red", 0.0, (0, 0, 0)),
    ("black-fire-red", 1.0, (255, 255, 255)), ("black-yellow", 0.5, (127, 127, 0)), ("black-yellow", -1.0, (0, 0, 255)),
    ("blue-white-red", 0.0, (255, 254, 254)), ("blue-white-red", -1.0, (0, 0, 255)), ("afm-hot", 0.0, (255, 128, 0)),
    ("afm-hot", -1.0, (0, 0, 0)), ("jet", -1.0, (0, 0, 127)), ("jet", 1.0, (127, 0, 0)), ("seismic", -1.0, (0, 0, 76)),
    ("seismic", 1.0, (127, 0, 0)), ("seismic", 0.0, (255, 253, 253)),
]


@pytest.mark.parametrize("name, x, rgb", VIRELAY_POINTS)
def test_virelay_colour_maps_at_known_points(name, x, rgb):
    assert tuple(colormaps.COLORMAPS[name](np.array([x]))[0]) == (*rgb, 255)


def test_zennit_colour_maps_are_zennits_palettes():
    from zennit.image import CMAPS

    assert set(colormaps.ZENNIT_COLORMAPS.values()) == set(CMAPS)
    assert set(colormaps.VIRELAY_COLORMAPS) | set(colormaps.ZENNIT_COLORMAPS) == set(colormaps.COLORMAPS)
    x = np.linspace(-1, 1, 513)
    index = ((x + 1) / 2 * 255).astype(np.uint8)  # zennit.image.imgify(x, vmin=-1, vmax=1) before the palette look-up
    for name, source in colormaps.ZENNIT_COLORMAPS.items():
        expected = (CMAPS[source](index / 255.0) * 255).round().astype(int)
        assert np.abs(colormaps.COLORMAPS[name](x)[:, :3].astype(int) - expected).max() <= 1, name
    assert tuple(colormaps.COLORMAPS["coldnhot"](np.array([-1.0, 1.0]))[:, :3].ravel()) == (0, 255, 255, 255, 255, 255)
    assert tuple(colormaps.COLORMAPS["france"](np.array([-1.0, 1.0]))[:, :3].ravel()) == (0x00, 0x55, 0xa4, 0xef, 0x41, 0x35)


def test_heatmap_is_channel_summed_and_normalised_by_max_abs():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 8, 9)) * 7
    x = render.normalized(a)
    summed = a.sum(axis=0)
    assert np.abs(x).max() == 1.0
    np.testing.assert_allclose(x, summed / np.abs(summed).max())
    np.testing.assert_array_equal(render.heatmap_rgba(a, "jet"), render.heatmap_rgba(a * 1000, "jet"))
    # An all-negative map: its strongest pixel is full blue, not an overflow (ViRelAy divides by max(a) < 0 there).
    negative = -np.abs(summed) - 0.1
    rgba = render.heatmap_rgba(negative, "black-green")
    peak = np.unravel_index(np.abs(negative).argmax(), negative.shape)
    assert tuple(rgba[peak]) == (0, 0, 255, 255)
    assert rgba[..., 1].max() == 0


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", ["black-fire-red", "gray-red", "seismic", "coldnhot"])
def test_all_zero_and_non_finite_maps_render_blank(name):
    zero = render.heatmap_rgba(np.zeros((3, 5, 6), np.float32), name)
    assert zero.shape == (5, 6, 4)
    assert (zero == colormaps.COLORMAPS[name](np.zeros(1))[0]).all()
    broken = np.full((5, 6), np.nan)
    broken[0, 0] = np.inf
    np.testing.assert_array_equal(render.heatmap_rgba(broken, name), zero)
    image = np.full((5, 6, 3), 90, np.uint8)
    np.testing.assert_array_equal(render.overlay_rgba(image, np.zeros((5, 6)), name)[..., :3], image)  # alpha 0 → grey input


def test_unknown_colour_map_and_mode_are_clear_errors():
    with pytest.raises(RelaylabError, match="colormap: expected one of gray-red"):
        render.heatmap_rgba(np.ones((2, 2)), "viridis")
    with pytest.raises(RelaylabError, match="mode: expected one of input, attribution, overlay"):
        render.check_mode("heat")


@pytest.fixture
def project_path(make_project):
    return make_project(n_samples=24, height=12, width=20)


@pytest.mark.parametrize("mode", render.MODES)
def test_png_round_trip_is_lossless(project_path, mode):
    with open_project(project_path) as project:
        rgba = render.render_rgba(project, 5, mode, "blue-white-red")
        png = render.render_png(project, 5, mode, "blue-white-red")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = decode(png)
    assert decoded.shape == (12, 20, 4)
    np.testing.assert_array_equal(decoded, rgba)
    noise = np.random.default_rng(2).integers(0, 256, (7, 5, 4)).astype(np.uint8)
    np.testing.assert_array_equal(decode(render.encode_png(noise)), noise)


def test_input_mode_shows_the_stored_pixels_and_attribution_mode_the_stored_relevance(project_path):
    folder = project_path.parent
    with h5py.File(folder / "dataset.h5") as h5:
        stored = h5["data"][7]
    with open_project(project_path) as project:
        np.testing.assert_array_equal(render.input_rgb(project, 7), stored.transpose(1, 2, 0))
        relevance = project.attributions[next(iter(project.attributions))]["attribution"].sel(sample=7).values
        np.testing.assert_array_equal(render.render_rgba(project, 7, "attribution", "jet"), render.heatmap_rgba(relevance, "jet"))


@pytest.mark.parametrize("dtype, to_uint8", [("uint8", lambda v: v), ("float01", lambda v: np.round(v * 255)),
                                             ("float11", lambda v: np.round((v + 1) / 2 * 255))])
def test_grey_inputs_stay_grey_in_the_projects_value_range(make_project, dtype, to_uint8):
    path = make_project(n_samples=6, channels=1, dtype=dtype)
    with h5py.File(path.parent / "dataset.h5") as h5:
        stored = h5["data"][2, 0].astype(np.float64)
    with open_project(path) as project:
        rgb = render.input_rgb(project, 2)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], to_uint8(stored).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("height, width, display_px, expected", [
    (32, 32, 150, "pixelated"), (150, 400, 150, "pixelated"), (151, 151, 150, "smooth"), (224, 224, 150, "smooth"),
    (400, 100, 150, "pixelated"), (224, 224, 256, "pixelated"), (129, 129, 128, "smooth")])
def test_virelay_sampling_rule(height, width, display_px, expected):
    assert render.sampling_for(height, width, display_px) == expected


def test_sampling_choice_to_css():
    assert render.css_image_rendering("automatic", 32, 32) == "pixelated"
    assert render.css_image_rendering("automatic", 224, 224) == "auto"
    assert render.css_image_rendering("smooth", 16, 16) == "auto"
    assert render.css_image_rendering("pixelated", 800, 800) == "pixelated"
    with pytest.raises(RelaylabError, match="sampling"):
        render.css_image_rendering("blurry", 16, 16)


def test_colormap_preview_is_a_gradient_from_minus_one_to_one():
    preview = decode(render.colormap_preview_png("black-fire-red", width=64, height=5))
    assert preview.shape == (5, 64, 4)
    assert (preview == preview[0]).all()
    np.testing.assert_array_equal(preview[0, [0, -1]], colormaps.COLORMAPS["black-fire-red"](np.array([-1.0, 1.0])))


def test_project_data_renders_each_png_once_with_its_content_hash(project_path):
    from relaylab.explore.data import CACHE

    data = ProjectData.of(project_path)
    CACHE.clear()
    png, etag = data.png(6, "overlay", "jet")
    assert etag == hashlib.sha256(png).hexdigest()[:32]
    assert data.png(6, "overlay", "jet")[0] is png and len(CACHE) == 1 and CACHE.nbytes == len(png) + len(etag)
    assert data.png(6, "overlay", "seismic")[0] != png and len(CACHE) == 2
    data.png(6, "input", "jet")
    assert data.png(6, "input", "seismic")[0] is data.png(6, "input", "jet")[0]  # inputs have no colour map
    np.testing.assert_array_equal(decode(png), render.render_rgba(data.project, 6, "overlay", "jet"))


# ----------------------------------------------------------------------------------------------------- the server


@pytest.fixture
def served(project_path):
    """A real Panel server (pn.serve, as `relaylab serve` runs it) whose app asks for image URLs in its session."""
    urls: dict[str, str] = {}
    data = ProjectData.of(project_path)

    def app():
        urls["overlay"] = serve.image_url(data, 3, "overlay", "jet")
        urls["input"] = serve.image_url(data, 4, "input")
        urls["colormap"] = serve.colormap_url("seismic", 32, 4)
        return pn.pane.HTML("images")

    port = free_port()
    server = pn.serve({"app": app}, port=port, address="127.0.0.1", threaded=True, show=False, start=True)
    try:
        wait_for(port, "/app")
        yield port, urls
    finally:
        server.stop()


def test_image_route_serves_cacheable_pngs(served, project_path):
    port, urls = served
    assert urls["overlay"].startswith("/relaylab/img/") and "colormap=jet" in urls["overlay"]
    status, headers, body = get(port, urls["overlay"])
    assert status == 200, body
    assert headers["content-type"] == "image/png"
    assert "max-age" in headers["cache-control"]
    assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    with open_project(project_path) as project:
        np.testing.assert_array_equal(decode(body), render.render_rgba(project, 3, "overlay", "jet"))
        status, _, body = get(port, urls["input"])
        np.testing.assert_array_equal(decode(body), render.render_rgba(project, 4, "input", "jet"))
    status, headers_304, body_304 = get(port, urls["overlay"], {"If-None-Match": headers["etag"]})
    assert status == 304 and body_304 == b""
    status, headers, body = get(port, urls["colormap"])
    assert status == 200 and decode(body).shape == (4, 32, 4)


def test_image_route_answers_bad_requests_with_4xx_and_a_message(served):
    port, urls = served
    base, query = urls["overlay"].split("?")
    key = base.split("/")[3]
    cases = [
        (f"/relaylab/img/{key}/24.png?{query}", 404, "sample index in 0..23"),
        (f"/relaylab/img/{key}/-1.png?{query}", 400, "non-negative integer sample index"),
        (f"/relaylab/img/{key}/x.png?{query}", 400, "integer sample index"),
        (f"/relaylab/img/{key}/3.png?mode=overlay&colormap=viridis", 400, "colormap: expected one of"),
        (f"/relaylab/img/{key}/3.png?mode=heat", 400, "mode: expected one of"),
        (f"/relaylab/img/{key}/3.png?mode=attribution&attribution=nope", 404, "an attribution set"),
        (f"/relaylab/img/{'0' * 16}/3.png?{query}", 404, "unknown project"),
        ("/relaylab/img/..%2F..%2Fetc%2Fpasswd/3.png", 404, "unknown project"),
        ("/relaylab/colormap/viridis.png", 400, "colormap: expected one of"),
    ]
    for url, expected, message in cases:
        status, headers, body = get(port, url)
        assert status == expected, (url, status, body)
        assert headers["content-type"].startswith("text/plain") and message in body.decode(), (url, body)


@contextlib.contextmanager
def child_server(command: list[str], port: int, path: str, log: Path, env: dict | None = None, timeout: float = 60):
    """A server started as a child process (output to `log`), once it answers `path` with 200; terminated afterwards
    with every process it forked (`--num-procs`): it runs in a process group of its own, and the group is stopped."""
    with open(log, "w") as output:
        server = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        try:
            wait_for(port, path, timeout)
        except TimeoutError:
            pytest.fail(f"the server did not start: {' '.join(command)}\n{log.read_text()[-3000:]}")
        yield server
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group `process` leads, then SIGKILL to what is left of it after `timeout` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def session_texts(port: int, path: str, **arguments: str) -> tuple[list[str], list[str]]:
    """A session of a served Panel app, pulled over its websocket as a browser would open it (`arguments`: the URL
    query): the titles of its tabs, in order, and the texts (unescaped HTML) of its panes."""
    import panel.models  # noqa: F401  (registers Panel's model types, which the pulled document holds)

    import relaylab.explore.clicks  # noqa: F401  (and the explorer's own ESM components' data models)
    from bokeh.client import pull_session
    from bokeh.models import Tabs

    with pull_session(url=f"http://127.0.0.1:{port}{path}", arguments=arguments) as session:
        models = list(session.document.models)
    texts = [html.unescape(m.text) for m in models if isinstance(getattr(m, "text", None), str)]
    # the grid's cards and the inspector are ESM components: their markup is the `html` of their data model
    texts += [html.unescape(m.data.html) for m in models if isinstance(getattr(getattr(m, "data", None), "html", None), str)]
    return [tab.title for m in models if isinstance(m, Tabs) and "rl-projects" in (m.css_classes or []) for tab in m.tabs], texts


def test_image_route_under_panel_serve(project_path, tmp_path):
    """`panel serve app.py --args PROJECT`: the route is installed by the first session, with no extra flags."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import os, pathlib, sys
        import panel as pn
        from relaylab.explore.data import ProjectData
        from relaylab.explore.serve import image_url
        url = image_url(ProjectData.of(sys.argv[1]), 2, "attribution", "gray-red")
        pathlib.Path(os.environ["RELAYLAB_TEST_URL_FILE"]).write_text(url)
        pn.pane.HTML(url).servable()
    """))
    url_file = tmp_path / "url.txt"
    port = free_port()
    command = [sys.executable, "-m", "panel", "serve", str(script), "--port", str(port), "--address", "127.0.0.1", "--args", str(project_path)]
    with child_server(command, port, "/app", tmp_path / "server.log", env={"RELAYLAB_TEST_URL_FILE": str(url_file)}):
        url = url_file.read_text()
        status, headers, body = get(port, url)
        assert status == 200, body
        assert headers["content-type"] == "image/png" and "etag" in headers
        with open_project(project_path) as project:
            np.testing.assert_array_equal(decode(body), render.render_rgba(project, 2, "attribution", "gray-red"))
        status, _, body = get(port, url.replace("/2.png", "/99.png"))
        assert status == 404 and b"sample index in 0..23" in body


def test_relaylab_serve_serves_the_explorer_and_its_images(make_project, tmp_path):
    """`relaylab serve PROJECT`: the page, a session that opens a share link and shows the project, and the images
    its sample cards point to, all over HTTP from the child process."""
    path = make_project("served", n_samples=24, height=12, width=20)
    port = free_port()
    command = [sys.executable, "-m", "relaylab.cli", "serve", str(path), "--port", str(port), "--address", "127.0.0.1", "--no-show"]
    with child_server(command, port, "/", tmp_path / "serve.log", timeout=300):
        status, headers, body = get(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"<title>relaylab explorer</title>" in body
        tabs, texts = session_texts(port, "/", embeddingVectors="2-5", imageMode="attribution", colorMap="jet")
        assert tabs == ["served"]
        assert any('class="rl-footer" data-project="served"' in text for text in texts)
        urls = sorted({html.unescape(u) for text in texts for u in re.findall(r'src="(/relaylab/img/[^"]+)"', text)})
        assert [int(re.search(r"/(\d+)\.png", u).group(1)) for u in urls] == [2, 3, 4, 5]
        status, headers, body = get(port, urls[1])
        assert status == 200 and headers["content-type"] == "image/png"
        with open_project(path) as project:
            np.testing.assert_array_equal(decode(body), render.render_rgba(project, 3, "attribution", "jet"))


def test_the_explorer_app_serves_every_project_named_in_relaylab_projects(make_project, tmp_path):
    """`panel serve apps/explorer.py` without --args: the projects come from $RELAYLAB_PROJECTS, one tab each."""
    first, second = make_project("first", n_samples=20), make_project("second", n_samples=20, seed=3)
    port = free_port()
    command = [sys.executable, "-m", "panel", "serve", "apps/explorer.py", "--port", str(port), "--address", "127.0.0.1", "--warm"]
    env = {"RELAYLAB_PROJECTS": os.pathsep.join(map(str, (first, second)))}
    with child_server(command, port, "/explorer", tmp_path / "explorer.log", env=env, timeout=300):
        tabs, texts = session_texts(port, "/explorer")
        assert tabs == ["first", "second"]
        assert not any("could not be opened" in text or "No project to show" in text for text in texts)
        _, texts = session_texts(port, "/explorer", project="second")  # a share link of the second tab
        assert any('class="rl-footer" data-project="second"' in text for text in texts)


@pytest.mark.slow  # a panel server per case; the in-process serve test covers the precedence quickly
@pytest.mark.parametrize("both", [False, True], ids=["virelay-projects", "both-set"])
def test_the_explorer_app_serves_the_projects_named_in_virelay_projects(make_project, tmp_path, both):
    """`panel serve apps/explorer.py` without --args reads ViRelAy's $VIRELAY_PROJECTS (`:`-separated, as ViRelAy's WSGI
    app reads it) when $RELAYLAB_PROJECTS is not set; when both are, RELAYLAB_PROJECTS is served and VIRELAY_PROJECTS
    ignored."""
    first, second = make_project("first", n_samples=20), make_project("second", n_samples=20, seed=3)
    own = make_project("own", n_samples=20, seed=5)
    port = free_port()
    command = [sys.executable, "-m", "panel", "serve", "apps/explorer.py", "--port", str(port), "--address", "127.0.0.1", "--warm"]
    env = {"VIRELAY_PROJECTS": f"{first}:{second}", "RELAYLAB_PROJECTS": str(own) if both else ""}
    with child_server(command, port, "/explorer", tmp_path / "explorer.log", env=env, timeout=300):
        tabs, texts = session_texts(port, "/explorer")
        assert tabs == (["own"] if both else ["first", "second"])
        assert not any("could not be opened" in text or "No project to show" in text for text in texts)


def test_relaylab_serve_without_projects_reads_relaylab_then_virelay_projects(make_project, tmp_path, cli, monkeypatch, caplog):
    """`relaylab serve` (server start replaced by a recorder): PROJECT arguments, else $RELAYLAB_PROJECTS, else
    $VIRELAY_PROJECTS (split at `:` on every system, relative paths from the working folder, as ViRelAy does)."""
    from relaylab.explore import app as explorer_app
    from relaylab.explore import embedding
    from relaylab.explore.commands import environment_projects

    first, second, own = (make_project(name, n_samples=20) for name in ("first", "second", "own"))
    served = []
    monkeypatch.setattr(pn, "serve", lambda apps, **kwargs: served.append(apps["/"]()))
    monkeypatch.setattr(explorer_app, "build_app", lambda paths: list(paths))
    monkeypatch.setattr(embedding, "warm_up", lambda: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELAYLAB_PROJECTS", raising=False)
    monkeypatch.setenv("VIRELAY_PROJECTS", f"{first.relative_to(tmp_path)}:{second.relative_to(tmp_path)}")
    assert cli("serve", "--no-show").returncode == 0
    assert served[-1] == [first.resolve(), second.resolve()]
    monkeypatch.setenv("RELAYLAB_PROJECTS", str(own))
    with caplog.at_level("WARNING", logger="relaylab.explore.commands"):
        assert cli("serve", "--no-show").returncode == 0
    assert served[-1] == [own.resolve()]
    assert "VIRELAY_PROJECTS (2) is ignored" in caplog.text
    assert cli("serve", "--no-show", second).returncode == 0 and served[-1] == [second.resolve()]  # arguments first
    monkeypatch.setenv("RELAYLAB_PROJECTS", "")
    monkeypatch.setenv("VIRELAY_PROJECTS", f"{first}:{tmp_path / 'missing.yaml'}")
    refused = cli("serve", "--no-show")  # every project is checked before the server starts
    assert refused.returncode == 2 and "missing.yaml" in refused.stderr and len(served) == 3
    monkeypatch.delenv("VIRELAY_PROJECTS")
    refused = cli("serve", "--no-show")
    assert refused.returncode == 2 and "RELAYLAB_PROJECTS or VIRELAY_PROJECTS" in refused.stderr and len(served) == 3
    # ViRelAy splits at ':' on every system; RELAYLAB_PROJECTS follows os.pathsep (';' on Windows)
    monkeypatch.setattr(os, "pathsep", ";")
    assert environment_projects({"RELAYLAB_PROJECTS": "a;b"}) == ["a", "b"]
    assert environment_projects({"VIRELAY_PROJECTS": "a:b::"}) == ["a", "b"]
    assert environment_projects({"VIRELAY_PROJECTS": "a;b"}) == ["a;b"]


def test_outside_a_server_image_url_is_a_data_uri_of_the_same_png(project_path):
    uri = serve.image_url(ProjectData.of(project_path), 1, "attribution", "afm-hot")
    assert uri.startswith("data:image/png;base64,")
    with open_project(project_path) as project:
        np.testing.assert_array_equal(decode(base64.b64decode(uri.split(",", 1)[1])), render.render_rgba(project, 1, "attribution", "afm-hot"))


def test_register_project_keys_do_not_reveal_or_accept_paths(project_path):
    data = ProjectData.of(project_path)
    assert ProjectData.of(str(project_path.parent / ".." / project_path.parent.name / project_path.name)) is data  # one per project
    key = data.key
    assert ProjectData.registered(key) is data and data.project.path.resolve() == Path(project_path).resolve()
    assert str(project_path.parent) not in key and "/" not in key
    assert ProjectData.registered(str(project_path)) is None


@pytest.mark.parametrize("up_front", [False, True], ids=["installed-by-first-session", "extra-patterns"])
def test_routes_are_added_once_per_server(project_path, monkeypatch, up_front):
    import tornado.web

    added = []
    original = tornado.web.Application.add_handlers
    monkeypatch.setattr(tornado.web.Application, "add_handlers", lambda app, host, handlers: added.append(handlers) or original(app, host, handlers))
    urls = []
    data = ProjectData.of(project_path)
    app = lambda: urls.append(serve.image_url(data, len(urls), "input")) or pn.pane.HTML("images")
    port = free_port()
    extra = {"extra_patterns": serve.routes()} if up_front else {}
    server = pn.serve({"app": app}, port=port, address="127.0.0.1", threaded=True, show=False, start=True, **extra)
    try:
        wait_for(port, "/app")
        assert get(port, "/app")[0] == 200
        assert len(urls) >= 2 and all(get(port, url)[0] == 200 for url in urls)
        assert len([h for h in added if h[0][1] is serve.ImageHandler]) == (0 if up_front else 1)
    finally:
        server.stop()


def test_relaylab_serve_listens_on_loopback_by_default(make_project, tmp_path):
    """Closed by default: without --address the server's listening sockets are bound to 127.0.0.1 only (read from the
    child's sockets, not from its output)."""
    import psutil

    path = make_project("closed", n_samples=12, height=8, width=8)
    port = free_port()
    command = [sys.executable, "-m", "relaylab.cli", "serve", str(path), "--port", str(port), "--no-show"]
    with child_server(command, port, "/", tmp_path / "serve.log", timeout=300) as server:
        listening = {c.laddr.ip for c in psutil.Process(server.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
