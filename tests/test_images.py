"""Colour maps as ViRelAy and zennit define them, heatmap normalisation, lossless PNGs, ViRelAy's sampling rule, the PNG
cache, and the image route on a real Panel server (`pn.serve` in this process and `panel serve` in a child process)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import socket
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
from relaylab.explore import images

VIRELAY_PYTHON = os.environ.get("RELAYLAB_VIRELAY_PYTHON")

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
    request = {"x": x.tolist(), "a": (summed / np.abs(summed).max()).tolist(), "image": image.tolist(), "names": list(images.VIRELAY_COLORMAPS)}
    done = subprocess.run([VIRELAY_PYTHON, "-c", VIRELAY_RENDER], input=json.dumps(request), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout)
    for name in images.VIRELAY_COLORMAPS:
        np.testing.assert_array_equal(images.COLORMAPS[name](x)[:, :3], np.array(theirs[name]["heatmap"]), err_msg=name)
        np.testing.assert_array_equal(images.overlay_rgba(image, a, name)[..., :3], np.array(theirs[name]["overlay"]), err_msg=name)


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
    assert tuple(images.COLORMAPS[name](np.array([x]))[0]) == (*rgb, 255)


def test_zennit_colour_maps_are_zennits_palettes():
    from zennit.image import CMAPS

    assert set(images.ZENNIT_COLORMAPS.values()) == set(CMAPS)
    assert set(images.VIRELAY_COLORMAPS) | set(images.ZENNIT_COLORMAPS) == set(images.COLORMAPS)
    x = np.linspace(-1, 1, 513)
    index = ((x + 1) / 2 * 255).astype(np.uint8)  # zennit.image.imgify(x, vmin=-1, vmax=1) before the palette look-up
    for name, source in images.ZENNIT_COLORMAPS.items():
        expected = (CMAPS[source](index / 255.0) * 255).round().astype(int)
        assert np.abs(images.COLORMAPS[name](x)[:, :3].astype(int) - expected).max() <= 1, name
    assert tuple(images.COLORMAPS["coldnhot"](np.array([-1.0, 1.0]))[:, :3].ravel()) == (0, 255, 255, 255, 255, 255)
    assert tuple(images.COLORMAPS["france"](np.array([-1.0, 1.0]))[:, :3].ravel()) == (0x00, 0x55, 0xa4, 0xef, 0x41, 0x35)


def test_heatmap_is_channel_summed_and_normalised_by_max_abs():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 8, 9)) * 7
    x = images.normalized(a)
    summed = a.sum(axis=0)
    assert np.abs(x).max() == 1.0
    np.testing.assert_allclose(x, summed / np.abs(summed).max())
    np.testing.assert_array_equal(images.heatmap_rgba(a, "jet"), images.heatmap_rgba(a * 1000, "jet"))
    # An all-negative map: its strongest pixel is full blue, not an overflow (ViRelAy divides by max(a) < 0 there).
    negative = -np.abs(summed) - 0.1
    rgba = images.heatmap_rgba(negative, "black-green")
    peak = np.unravel_index(np.abs(negative).argmax(), negative.shape)
    assert tuple(rgba[peak]) == (0, 0, 255, 255)
    assert rgba[..., 1].max() == 0


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", ["black-fire-red", "gray-red", "seismic", "coldnhot"])
def test_all_zero_and_non_finite_maps_render_blank(name):
    zero = images.heatmap_rgba(np.zeros((3, 5, 6), np.float32), name)
    assert zero.shape == (5, 6, 4)
    assert (zero == images.COLORMAPS[name](np.zeros(1))[0]).all()
    broken = np.full((5, 6), np.nan)
    broken[0, 0] = np.inf
    np.testing.assert_array_equal(images.heatmap_rgba(broken, name), zero)
    image = np.full((5, 6, 3), 90, np.uint8)
    np.testing.assert_array_equal(images.overlay_rgba(image, np.zeros((5, 6)), name)[..., :3], image)  # alpha 0 → grey input


def test_unknown_colour_map_and_mode_are_clear_errors():
    with pytest.raises(RelaylabError, match="colormap: expected one of gray-red"):
        images.heatmap_rgba(np.ones((2, 2)), "viridis")
    with pytest.raises(RelaylabError, match="mode: expected one of input, attribution, overlay"):
        images.check_mode("heat")


@pytest.fixture
def project_path(make_project):
    return make_project(n_samples=24, height=12, width=20)


@pytest.mark.parametrize("mode", images.MODES)
def test_png_round_trip_is_lossless(project_path, mode):
    with open_project(project_path) as project:
        rgba = images.render_rgba(project, 5, mode, "blue-white-red")
        png = images.render_png(project, 5, mode, "blue-white-red")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = decode(png)
    assert decoded.shape == (12, 20, 4)
    np.testing.assert_array_equal(decoded, rgba)
    noise = np.random.default_rng(2).integers(0, 256, (7, 5, 4)).astype(np.uint8)
    np.testing.assert_array_equal(decode(images.encode_png(noise)), noise)


def test_input_mode_shows_the_stored_pixels_and_attribution_mode_the_stored_relevance(project_path):
    folder = project_path.parent
    with h5py.File(folder / "dataset.h5") as h5:
        stored = h5["data"][7]
    with open_project(project_path) as project:
        np.testing.assert_array_equal(images.input_rgb(project, 7), stored.transpose(1, 2, 0))
        relevance = project.attributions[next(iter(project.attributions))]["attribution"].sel(sample=7).values
        np.testing.assert_array_equal(images.render_rgba(project, 7, "attribution", "jet"), images.heatmap_rgba(relevance, "jet"))


@pytest.mark.parametrize("dtype, to_uint8", [("uint8", lambda v: v), ("float01", lambda v: np.round(v * 255)),
                                             ("float11", lambda v: np.round((v + 1) / 2 * 255))])
def test_grey_inputs_stay_grey_in_the_projects_value_range(make_project, dtype, to_uint8):
    path = make_project(n_samples=6, channels=1, dtype=dtype)
    with h5py.File(path.parent / "dataset.h5") as h5:
        stored = h5["data"][2, 0].astype(np.float64)
    with open_project(path) as project:
        rgb = images.input_rgb(project, 2)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], to_uint8(stored).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("height, width, display_px, expected", [
    (32, 32, 150, "pixelated"), (150, 400, 150, "pixelated"), (151, 151, 150, "smooth"), (224, 224, 150, "smooth"),
    (400, 100, 150, "pixelated"), (224, 224, 256, "pixelated"), (129, 129, 128, "smooth")])
def test_virelay_sampling_rule(height, width, display_px, expected):
    assert images.sampling_for(height, width, display_px) == expected


def test_sampling_choice_to_css():
    assert images.css_image_rendering("automatic", 32, 32) == "pixelated"
    assert images.css_image_rendering("automatic", 224, 224) == "auto"
    assert images.css_image_rendering("smooth", 16, 16) == "auto"
    assert images.css_image_rendering("pixelated", 800, 800) == "pixelated"
    with pytest.raises(RelaylabError, match="sampling"):
        images.css_image_rendering("blurry", 16, 16)


def test_colormap_preview_is_a_gradient_from_minus_one_to_one():
    preview = decode(images.colormap_preview_png("black-fire-red", width=64, height=5))
    assert preview.shape == (5, 64, 4)
    assert (preview == preview[0]).all()
    np.testing.assert_array_equal(preview[0, [0, -1]], images.COLORMAPS["black-fire-red"](np.array([-1.0, 1.0])))


def test_png_cache_renders_once_and_evicts_least_recently_used():
    cache = images.PngCache(max_bytes=250)
    renders = []
    make = lambda n: (lambda: renders.append(n) or bytes([n]) * 100)
    first = cache.get(("a",), make(1))
    assert cache.get(("a",), make(9)) == first and renders == [1]
    assert first[1] == hashlib.sha256(first[0]).hexdigest()[:32]
    cache.get(("b",), make(2))
    cache.get(("a",), make(9))          # a is now the most recently used
    cache.get(("c",), make(3))          # 300 bytes > 250: b goes
    assert len(cache) == 2
    cache.get(("b",), make(4))
    assert renders == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", url, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def wait_for(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _ = get(port, path)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no server answered {path} on port {port}")
        time.sleep(0.2)


@pytest.fixture
def served(project_path):
    """A real Panel server (pn.serve, as `relaylab serve` runs it) whose app asks for image URLs in its session."""
    urls: dict[str, str] = {}

    def app():
        urls["overlay"] = images.image_url(project_path, 3, "overlay", "jet")
        urls["input"] = images.image_url(project_path, 4, "input")
        urls["colormap"] = images.colormap_url("seismic", 32, 4)
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
        np.testing.assert_array_equal(decode(body), images.render_rgba(project, 3, "overlay", "jet"))
        status, _, body = get(port, urls["input"])
        np.testing.assert_array_equal(decode(body), images.render_rgba(project, 4, "input", "jet"))
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
        (f"/relaylab/img/{key}/-1.png?{query}", 404, "sample index in 0..23"),
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


def test_image_route_under_panel_serve(project_path, tmp_path):
    """`panel serve app.py --args PROJECT`: the route is installed by the first session, with no extra flags."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import os, pathlib, sys
        import panel as pn
        from relaylab.explore import images
        url = images.image_url(sys.argv[1], 2, "attribution", "gray-red")
        pathlib.Path(os.environ["RELAYLAB_TEST_URL_FILE"]).write_text(url)
        pn.pane.HTML(url).servable()
    """))
    url_file = tmp_path / "url.txt"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "panel", "serve", str(script), "--port", str(port), "--address", "127.0.0.1",
                               "--args", str(project_path)], env={**os.environ, "RELAYLAB_TEST_URL_FILE": str(url_file)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(port, "/app")
        url = url_file.read_text()
        status, headers, body = get(port, url)
        assert status == 200, body
        assert headers["content-type"] == "image/png" and "etag" in headers
        with open_project(project_path) as project:
            np.testing.assert_array_equal(decode(body), images.render_rgba(project, 2, "attribution", "gray-red"))
        status, _, body = get(port, url.replace("/2.png", "/99.png"))
        assert status == 404 and b"sample index in 0..23" in body
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_outside_a_server_image_url_is_a_data_uri_of_the_same_png(project_path):
    uri = images.image_url(project_path, 1, "attribution", "afm-hot")
    assert uri.startswith("data:image/png;base64,")
    with open_project(project_path) as project:
        np.testing.assert_array_equal(decode(base64.b64decode(uri.split(",", 1)[1])), images.render_rgba(project, 1, "attribution", "afm-hot"))


def test_register_project_keys_do_not_reveal_or_accept_paths(project_path):
    key = images.register_project(project_path)
    assert images.registered_path(key) == Path(project_path).resolve()
    assert str(project_path.parent) not in key and "/" not in key
    assert images.registered_path(str(project_path)) is None


@pytest.mark.parametrize("up_front", [False, True], ids=["installed-by-first-session", "extra-patterns"])
def test_routes_are_added_once_per_server(project_path, monkeypatch, up_front):
    import tornado.web

    added = []
    original = tornado.web.Application.add_handlers
    monkeypatch.setattr(tornado.web.Application, "add_handlers", lambda app, host, handlers: added.append(handlers) or original(app, host, handlers))
    urls = []
    app = lambda: urls.append(images.image_url(project_path, len(urls), "input")) or pn.pane.HTML("images")
    port = free_port()
    extra = {"extra_patterns": images.routes()} if up_front else {}
    server = pn.serve({"app": app}, port=port, address="127.0.0.1", threaded=True, show=False, start=True, **extra)
    try:
        wait_for(port, "/app")
        assert get(port, "/app")[0] == 200
        assert len(urls) >= 2 and all(get(port, url)[0] == 200 for url in urls)
        assert len([h for h in added if h[0][1] is images.ImageHandler]) == (0 if up_front else 1)
    finally:
        server.stop()
