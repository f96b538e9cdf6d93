"""LayerInspector and SampleInspector driven through their params, click streams and the ViewState (no browser): a real
store, a real tiny CNN, the real SampleExplainer; what the panes show is read back (PNG bytes → arrays, HoloViews
elements, the inspector's figures' data URIs) and checked against an independent SampleExplainer on the same store."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
import xarray as xr
from torch import nn

from relaylab.analyze.activations import layer_tree
from relaylab.data import store as zstore
from relaylab.data.labels import label_map_from_entries
from relaylab.data.project import open_project
from relaylab.explain.live import SampleExplainer
from relaylab.explain.models import ModelSpec, record_model
from relaylab.explore.colormaps import COLORMAPS
from relaylab.explore.data import ProjectData
from relaylab.explore.inspector import SampleInspector
from relaylab.explore.layers import LayerInspector
from relaylab.explore.render import heatmap_rgba, input_rgb
from relaylab.explore.state import ViewState, fitted_values

N, CLASSES = 12, 3


def TinyCNN() -> nn.Module:
    """Three conv blocks and a linear head on 1×16×16 images (the `module:callable` the store records)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
    )


def write_inputs(path, rng) -> None:
    label_map = label_map_from_entries([{"index": i, "word_net_id": f"n{i:08d}", "name": f"class-{i}"} for i in range(CLASSES)])
    zstore.create_store(path, project={"name": "tiny", "model": "tiny-cnn", "description": ""}, dataset={"name": "noise"},
                        label_map=label_map, source="test_layers_view")
    images = rng.integers(0, 256, size=(N, 1, 16, 16), dtype=np.uint8)
    inputs = xr.Dataset({"input": (("sample", "channel", "y", "x"), images)},
                        coords={"sample": np.arange(N), "label": ("sample", np.arange(N) % CLASSES)})
    zstore.write_dataset(path, "inputs", inputs, kind="inputs", attrs={"name": "noise", "value_range": [0, 255]}, progress=False)


def write_model_store(path, rng) -> None:
    """Inputs and a recorded tiny CNN with its weights beside the store (status not yet complete)."""
    write_inputs(path, rng)
    torch.manual_seed(0)
    torch.save(TinyCNN().state_dict(), path.parent / "tiny.pt")
    record_model(path, ModelSpec(model=f"{__name__}:TinyCNN", weights="tiny.pt", input_shape=(1, 16, 16), mean=(0.5,), std=(0.25,),
                                 base=str(path.parent)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A complete store with a recorded tiny CNN and one activation embedding (layer `2`, category `all`)."""
    folder = tmp_path_factory.mktemp("layers")
    path = folder / "project.zarr"
    rng = np.random.default_rng(0)
    write_model_store(path, rng)
    members = rng.permutation(N)
    # the layout analyze_activations writes, with made-up coordinates: the view only reads them
    tree = layer_tree(members, {"pca": rng.normal(size=(N, 2)).astype(np.float32)}, {})
    zstore.write_analysis(path, "activation-2", tree, progress=False)
    zstore.update_store_metadata(path, status="complete")
    return path


@pytest.fixture(scope="module")
def reference(store):
    """An explainer of its own, so what the view shows is compared with values computed independently of it."""
    with open_project(store) as project:
        yield SampleExplainer(project)


def inspector_of(path) -> LayerInspector:
    """The inspector of the project at `path` (its data shared with the process, as in the app) on a fresh ViewState."""
    return LayerInspector(ProjectData.of(path), ViewState())


@pytest.fixture
def inspector(store):
    return inspector_of(store)


def test_clicking_the_diagram_picks_the_layer(inspector, reference):
    names = [layer["name"] for layer in reference.layers]
    assert [x["name"] for x in inspector.layers] == names
    inspector.diagram_tap.event(x=4.5, y=0.0)  # the fifth box
    assert inspector.state.layer == names[4]
    boxes = inspector.diagram_boxes[()]
    widths = dict(zip(boxes.dimension_values("name"), boxes.dimension_values("width")))
    assert widths[names[4]] > max(w for n, w in widths.items() if n != names[4])  # the picked box is outlined
    inspector.diagram_tap.event(x=-0.6, y=0.0)  # left of the first box: nothing picked
    assert inspector.state.layer == names[4]


def test_sessions_share_the_model_but_not_the_layer_or_sample(store):
    """Two sessions' inspectors of one project: one explainer (the model is loaded once per process); each shows and
    picks the layer and sample of its own ViewState, and a state without a layer shows the default one without
    writing it into the state (so the share link stays as it was)."""
    data = ProjectData.of(store)
    one, two = LayerInspector(data, ViewState()), LayerInspector(data, ViewState())
    assert one.explainer is two.explainer is data.explainer
    assert one.state.layer is None and one.layer == two.layer == "2"  # the only layer with an activation embedding
    assert not one.embedding_note.visible and one.embedding_pane.object is not None  # layer 2's embedding is drawn
    one.diagram_tap.event(x=0.5, y=0.0)
    assert one.state.layer == one.layers[0]["name"] and two.state.layer is None and two.layer == "2"
    one.state.sample = 3
    assert "Sample 3" in one.sample_info.object and "Sample 3" not in two.sample_info.object
    assert one.state.to_query().count("sample=3") == 1 and "sample=" not in two.state.to_query()


def test_clicking_the_embedding_picks_the_sample(inspector, store):
    inspector.state.layer = "2"
    assert not inspector.embedding_note.visible and inspector.embedding == "pca"
    analysis = zstore.open_analysis(store, "activation-2")["all"]
    coords, index = analysis["embedding"]["pca"]["embedding"].values, analysis["index"].values
    j = int(np.argmax(coords[:, 0]))
    inspector.embedding_tap.event(x=coords[j, 0] + 1e-3, y=coords[j, 1])
    assert inspector.state.sample == int(index[j])
    assert f"Sample {index[j]}" in inspector.sample_info.object
    assert np.allclose(inspector.marker_pipe.data, coords[j:j + 1])  # the picked point is ringed
    inspector.state.layer = "0"  # no activation analysis for this one: a note, no plot
    assert inspector.embedding_note.visible and "activation-0" in inspector.embedding_note.object
    assert inspector.embedding_pane.object is None


def test_predictions_and_true_label(inspector, reference):
    inspector.state.sample = 5
    top = reference.predictions(5, top=10)
    bars = inspector.bars_pane.object
    assert list(bars.dimension_values("probability"))[::-1] == pytest.approx([p["score"] for p in top])
    assert f"true: **class-{5 % CLASSES}**" in inspector.sample_info.object
    assert f"predicted: **{top[0]['name']}**" in inspector.sample_info.object
    assert not inspector.inspect_button.disabled
    inspector.inspect_button.clicks += 1  # "Open in the sample inspector"
    assert inspector.state.tab == "sample"


def test_channel_grid_order(inspector, reference):
    inspector.state.apply({"layer": "3", "sample": 7})
    acts, scores = reference.layer_activations(7, "3")
    shown = [item["channel"] for item in inspector.channel_grid.items]
    assert shown == np.argsort(-scores, kind="stable").tolist()
    assert [item["score"] for item in inspector.channel_grid.items] == pytest.approx(np.sort(scores)[::-1].tolist())
    inspector.channel_order = "index"
    assert [item["channel"] for item in inspector.channel_grid.items] == list(range(acts.shape[0]))
    inspector.channel_grid.channel = 2  # what a click on a thumbnail does in the browser
    assert inspector.channel == 2
    zoomed = inspector.zoom_pane.object
    # dimension_values lists rows bottom-up (y ascending); the array's first row is shown at the top
    assert np.array_equal(np.flipud(zoomed.dimension_values("activation", flat=False)), acts[2])
    assert zoomed.bounds.lbrt() == (0, 0, acts.shape[2], acts.shape[1])  # full resolution: one unit per pixel


def test_bad_requests_show_an_alert(inspector):
    inspector.state.sample = 999
    assert inspector.alert.visible and "Unknown sample 999" in inspector.alert.object
    assert inspector.image_pane.object is None and inspector.channel_grid.items == []
    inspector.state.apply({"sample": 1, "layer": "3"})
    assert not inspector.alert.visible and inspector.image_pane.object is not None and inspector.channel_grid.items
    inspector.state.layer = "no.such.layer"
    assert inspector.alert.visible and "Unknown layer 'no.such.layer'" in inspector.alert.object


def test_store_without_a_model(tmp_path):
    path = tmp_path / "bare.zarr"
    write_inputs(path, np.random.default_rng(1))
    zstore.update_store_metadata(path, status="complete")
    shown = inspector_of(path).panel().objects
    assert len(shown) == 1 and "not available" in shown[0].object and "model" in shown[0].object


def test_flat_layer_shows_its_units(inspector, reference):
    inspector.state.apply({"layer": "9", "sample": 2})  # the linear head: (3, 1, 1), no feature maps to tile
    acts, _ = reference.layer_activations(2, "9")
    assert inspector.channel_grid.items == []
    units = np.flipud(inspector.zoom_pane.object.dimension_values("activation", flat=False)).reshape(-1)
    assert np.array_equal(units[:acts.size], acts.reshape(-1)) and np.isnan(units[acts.size:]).all()


def test_a_failing_explanation_shows_an_alert(tmp_path):
    """A layer listing from another model (here one layer the network lacks): the click shows the problem, no traceback."""
    path = tmp_path / "ghost.zarr"
    write_model_store(path, np.random.default_rng(2))
    model = zstore.store_metadata(path)["model"]
    model["layers"].append({"name": "ghost", "type": "Conv2d", "output_shape": [4, 16, 16]})
    zstore.update_store_metadata(path, model=model, status="complete")
    view = inspector_of(path)
    view.state.sample = 0
    assert view.alert.visible and "ghost" in view.alert.object


def test_channels_share_one_colour_scale(inspector, reference):
    """Every thumbnail is drawn against the layer's largest |activation|, which the legend states."""
    inspector.state.apply({"layer": "3", "sample": 7})
    acts, _ = reference.layer_activations(7, "3")
    peak = float(np.abs(acts).max())
    assert float(re.search(r'data-peak="([^"]+)"', inspector.channel_legend.object).group(1)) == pytest.approx(peak, rel=1e-5)
    items = {item["channel"]: item["src"] for item in inspector.channel_grid.items}

    def pixels(src: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))

    colormap = COLORMAPS[inspector.colormap]
    for c in range(len(acts)):  # 8×8 maps: thumbnails at full resolution
        assert np.array_equal(pixels(items[c]), colormap(np.clip(acts[c] / peak, -1, 1))), c
    weakest = int(np.argmin(np.abs(acts).reshape(len(acts), -1).max(axis=1)))
    assert np.abs(acts[weakest]).max() < 0.9 * peak  # so scaling each channel by its own peak would have looked different
    assert not np.array_equal(pixels(items[weakest]), colormap(acts[weakest] / np.abs(acts[weakest]).max()))


# ------------------------------------------------------------------------------------------------ sample inspector


def figures(view: SampleInspector) -> dict[tuple[int, str], np.ndarray]:
    """(sample, kind) → the RGBA pixels of each figure the inspector shows."""
    found = re.findall(r'<figure class="rl-explanation" data-kind="([^"]+)" data-sample="(\d+)"><img src="data:image/png;base64,([^"]+)"',
                       view.body.html)
    return {(int(sample), kind): np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) for kind, sample, data in found}


def sample_inspector_of(path) -> SampleInspector:
    data = ProjectData.of(path)
    state = ViewState()
    state.apply(fitted_values(data.project, state.values()))
    return SampleInspector(data, state)


def test_sample_inspector_shows_every_explanation(store, reference):
    view = sample_inspector_of(store)
    assert "No sample yet" in view.body.html
    view.state.sample = 4
    shown = figures(view)
    label = reference.predictions(4, top=1)[0]["class"]
    cam_layers = reference.cam_layers
    depth = len(cam_layers) - 2  # the last CAM layer is the 1×1 pool: a flat CAM, so the default is one before
    assert view.depth == depth
    cmap = view.colormap
    with open_project(store) as project:
        assert np.array_equal(shown[4, "input"][..., :3], input_rgb(project, 4))
    expected = {m: heatmap_rgba(reference.cam(4, label, cam_layers[depth], method=m), cmap) for m in ("gradcam", "layercam", "focus_layercam")}
    expected["guided_backprop"] = heatmap_rgba(reference.guided_backprop(4, label), cmap)
    expected["guided_gradcam"] = heatmap_rgba(reference.guided_gradcam(4, label, cam_layers[depth]), cmap)
    expected["lrp"] = heatmap_rgba(reference.lrp(4, label, "epsilon_plus_flat"), cmap)
    for kind, pixels in expected.items():
        assert np.array_equal(shown[4, kind], pixels), kind
    # Focus LayerCAM equals LayerCAM where every channel's gradient has one sign, as in this tiny net (test_cam.py
    # shows where they differ); every other pair must differ
    distinct = [shown[4, k] for k in ("input", *expected) if k != "focus_layercam"]
    for i, a in enumerate(distinct):
        assert np.ptp(a[..., :3]) > 0  # not blank
        assert all(not np.array_equal(a, b) for b in distinct[i + 1:])
    top = reference.predictions(4, top=10)
    assert re.findall(r'<tr data-class="(\d+)">', view.body.html) == [str(p["class"]) for p in top]

    other = (label + 1) % CLASSES  # the state's choices: class, depth, composite, colour map
    view.state.apply({"label": other, "depth": 0, "composite": "epsilon_alpha2_beta1", "inspector_colormap": "seismic"})
    shown = figures(view)
    assert np.array_equal(shown[4, "gradcam"], heatmap_rgba(reference.cam(4, other, cam_layers[0], method="gradcam"), "seismic"))
    assert np.array_equal(shown[4, "lrp"], heatmap_rgba(reference.lrp(4, other, "epsilon_alpha2_beta1"), "seismic"))
    assert view.label_select.value == other and view.depth_slider.value == 0


def test_pinned_samples_stay_side_by_side(store):
    view = sample_inspector_of(store)
    view.state.sample = 2
    view.pin_button.clicks += 1
    view.state.sample = 5
    view._on_action("pin", 5)  # the row's own pin button (a click in the browser sends this)
    view.state.sample = 8
    assert view.state.pinned == [2, 5] and view.samples == [8, 2, 5]
    assert sorted({s for s, _ in figures(view)}) == [2, 5, 8]
    view.state.apply({"category": "n00000001", "selection": [1]})  # other views changing leave the pins alone
    assert view.state.pinned == [2, 5]
    view._on_action("unpin", 2)
    assert view.state.pinned == [5] and "share" not in view.state.to_query() and "pinned=5" in view.state.to_query()
    view.unpin_button.clicks += 1
    assert view.state.pinned == [] and view.samples == [8]


def test_typed_sample_index_opens_it(store):
    view = sample_inspector_of(store)
    view.sample_input.value = 9
    assert view.state.sample == 9 and view.state.tab == "sample" and (9, "input") in figures(view)
    view.state.sample = 99  # not a sample of this 12-sample dataset: said in the row, no traceback
    assert "a sample index in 0..11" in view.body.html


def test_sample_inspector_without_a_model_shows_stored_heatmaps(tmp_path):
    path = tmp_path / "bare.zarr"
    write_inputs(path, np.random.default_rng(1))
    zstore.update_store_metadata(path, status="complete")
    view = sample_inspector_of(path)
    view.state.sample = 3
    assert "records no model" in view.note.object
    assert set(k for s, k in figures(view)) == {"input"} and "no predictions stored" in view.body.html


def test_a_model_that_fails_on_a_layer_is_said_in_the_row(tmp_path):
    path = tmp_path / "ghost2.zarr"
    write_model_store(path, np.random.default_rng(2))
    model = zstore.store_metadata(path)["model"]
    model["layers"].append({"name": "ghost", "type": "Conv2d", "output_shape": [4, 16, 16]})
    zstore.update_store_metadata(path, model=model, status="complete")
    view = sample_inspector_of(path)
    view.state.sample = 0
    assert "rl-inspect-error" in view.body.html and "ghost" in view.body.html


def test_a_map_of_the_raw_inputs_is_computed_on_demand_and_kept(store):
    """Asking for a map that is not stored starts it in the background (progress shown), draws it when done, keeps
    it in the store, and a second session asking for it gets the same job instead of a second computation."""
    inspector = inspector_of(store)
    inspector.state.apply({"map_source": "input", "map_perplexity": 10})
    job = inspector.map_job
    assert job is not None and inspector.map_progress.visible and inspector.embedding_pane.object is None
    other = inspector_of(store)
    other.state.apply({"map_source": "input", "map_perplexity": 10})
    assert other.map_job is job  # one computation for the process
    assert job.future.result(timeout=120) == job.name == "activation-input--tsne-p10-nall"
    inspector.poll_map()
    assert not inspector.map_progress.visible and job.progress == 1.0
    plot = inspector.embedding_pane.object
    assert plot is not None and inspector.map_title == "tsne of the raw inputs"
    assert len(inspector._point_samples) == N and sorted(inspector._point_samples) == list(range(N))
    meta = zstore.read_group_meta(store, f"analyses/{job.name}")
    assert meta["status"] == "complete" and meta["perplexity"] == 10 and meta["layer"] == "input"
    inspector.embedding_tap.event(x=float(inspector._points[0, 0]), y=float(inspector._points[0, 1]))
    assert inspector.state.sample == int(inspector._point_samples[0])  # its points are clickable like any map
