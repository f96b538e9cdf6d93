"""The explorer's view state (JSON files, share links) and selection geometry, on real projects, without a browser."""

from __future__ import annotations

import json

import holoviews as hv
import numpy as np
import pytest

from relaylab.data.project import open_project
from relaylab.data.schema import schema_problems
from relaylab.errors import RelaylabError
from relaylab.explore import state as vs
from relaylab.explore.data import ProjectData
from relaylab.explore.embedding import EmbeddingView, combine
from relaylab.explore.points import Points, point_in_polygon


@pytest.fixture
def project(make_project):
    with open_project(make_project("fixture", n_samples=60)) as opened:
        yield opened


def custom_state(project) -> vs.ViewState:
    """A view far from the defaults: last category (no tsne → spectral), other axes, clustering, maps, a selection."""
    state = vs.ViewState()
    node = project.analyses["spectral_analysis"]["n00000002"]
    members = vs.member_indices(node)
    state.apply(vs.fitted_values(project, {**state.values(), "category": "n00000002"}))
    state.apply({"embedding": "spectral", "x_dim": 3, "y_dim": 5, "clustering": "kmeans-02", "color_by": "correct",
                 "colormap": "coldnhot", "mode": "attribution", "sampling": "pixelated", "page": 1, "page_size": 7,
                 "selection": sorted(members[[0, 1, 2, 5, 9]].tolist())})
    state.apply({"attribution": list(project.attributions)[-1], "pinned": [9, 4, 17], "category_order": "suspicion",
                 "compare": "n00000001", "tab": "sample", "label": 1, "depth": 2, "composite": "epsilon_alpha2_beta1",
                 "inspector_colormap": "jet", "map_source": "input", "map_perplexity": 90, "map_subset": 1000})
    return state


# ------------------------------------------------------------------------------------------------ ranges


def test_ranges_round_trip_and_read_virelay_lists():
    samples = [0, 1, 2, 3, 7, 9, 10, 11, 40]
    text = vs.encode_ranges(samples)
    assert text == "0-3,7,9-11,40"
    assert vs.decode_ranges(text) == samples
    assert vs.decode_ranges("5,3,4,4") == [3, 4, 5]  # ViRelAy writes plain lists, in any order
    assert vs.encode_ranges([]) == "" and vs.decode_ranges("") == []


@pytest.mark.parametrize("text", ["3-", "a", "9-3", "1-2-3", "-4", "0-999999999999"])
def test_bad_ranges_are_refused(text):
    with pytest.raises(ValueError):
        vs.decode_ranges(text)


# ------------------------------------------------------------------------------------------------ share links


def test_query_round_trip_restores_every_field(project):
    state = custom_state(project)
    restored = vs.ViewState().from_query(state.to_query(), projects=[project])
    assert restored.values() == state.values()


def test_query_uses_virelay_keys_and_reads_a_virelay_link(project):
    state = custom_state(project)
    query = state.to_query()
    assert "analysisMethod=spectral-analysis" in query and "firstEmbeddingDimension=3" in query
    assert f"embeddingVectors={vs.encode_ranges(state.selection)}" in query
    virelay = "analysisMethod=spectral-analysis&analysisCategory=n00000001&embedding=spectral&clustering=hdbscan" \
              "&firstEmbeddingDimension=2&secondEmbeddingDimension=4&colorMap=jet&imageMode=input&embeddingVectors=4,1,7"
    restored = vs.ViewState().from_query(virelay, projects=[project])
    assert (restored.analysis, restored.category, restored.embedding, restored.clustering) == ("spectral_analysis", "n00000001", "spectral", "hdbscan")
    assert (restored.x_dim, restored.y_dim, restored.colormap, restored.mode, restored.selection) == (2, 4, "jet", "input", [1, 4, 7])


@pytest.mark.parametrize("query, key, found", [
    ("embeddingVectors=1-3,6000", "embeddingVectors", "6000"),
    ("colorMap=no-such-map", "colorMap", "no-such-map"),
    ("analysisMethod=missing-analysis", "analysisMethod", "missing-analysis"),
    ("analysisCategory=n00000001&embedding=spectral&firstEmbeddingDimension=8", "firstEmbeddingDimension", "8"),
    ("embedding=umap", "embedding", "umap"),
    ("sample=60", "sample", "60"),
    ("page=two", "page", "two"),
    ("project=elsewhere", "project", "elsewhere"),
])
def test_bad_query_names_the_key_and_changes_nothing(project, query, key, found):
    state = custom_state(project)
    before = state.values()
    with pytest.raises(RelaylabError) as error:
        state.from_query(query, projects=[project])
    assert any(p.path == key and found in p.found for p in error.value.problems), error.value.problems
    assert state.values() == before


# ------------------------------------------------------------------------------------------------ JSON files


def test_export_follows_the_schema_and_virelay_keys(project):
    state = custom_state(project)
    document = state.to_virelay_json(project, project_id=0)
    assert schema_problems("viewer-state", document, "export") == []
    node = project.analyses["spectral_analysis"]["n00000002"]
    members, clusters = vs.member_indices(node), np.asarray(node["cluster"]["kmeans-02"].values)
    assert document["selectedAnalysisMethod"] == "spectral-analysis"
    assert document["selectedCategoryHumanReadableName"] == "class 2"
    assert document["selectedEmbeddingVectorsIndices"] == state.selection
    expected = [int(clusters[members.tolist().index(s)]) for s in state.selection]
    assert document["selectedEmbeddingVectorsClusters"] == expected
    assert document["allEmbeddingVectorsIndices"] == members.tolist()
    assert document["numberOfClusters"] == len(set(clusters.tolist()))
    assert (document["modelName"], document["datasetName"]) == (project.model, project.dataset_name)


def test_json_round_trip_restores_every_field(project):
    state = custom_state(project)
    text = json.dumps(state.to_virelay_json(project))
    restored = vs.ViewState().from_json(text, projects=[project])
    assert restored.values() == state.values()


def test_imports_a_virelay_state_file(project):
    """What ViRelAy 0.6.1's Export writes: its keys only, projectId 0, analysis named with '-'."""
    members = vs.member_indices(project.analyses["spectral_analysis"]["n00000001"])
    document = {
        "projectId": 0, "projectName": project.name, "modelName": "synthetic-cnn", "datasetName": "fixture-data",
        "selectedAnalysisMethod": "spectral-analysis", "selectedAnalysisCategory": "n00000001",
        "selectedCategoryHumanReadableName": "class 1", "selectedEmbeddingName": "spectral", "selectedClustering": "hdbscan",
        "numberOfClusters": 4, "selectedColorMap": "blue-white-red", "selectedImageMode": "attribution",
        "selectedEmbeddingVectorsIndices": [int(members[3]), int(members[1])], "selectedEmbeddingVectorsClusters": [0, 1],
        "allEmbeddingVectorsIndices": members.tolist(), "allEmbeddingVectorsClusters": [0] * len(members),
    }
    state = vs.ViewState().from_json(json.dumps(document).encode(), projects=[project])
    assert (state.analysis, state.category, state.embedding, state.clustering) == ("spectral_analysis", "n00000001", "spectral", "hdbscan")
    assert (state.colormap, state.mode, state.x_dim, state.y_dim) == ("blue-white-red", "attribution", 0, 1)
    assert state.selection == sorted([int(members[3]), int(members[1])])


@pytest.mark.parametrize("change, key", [
    ({"selectedImageMode": "sketch"}, "selectedImageMode"),
    ({"selectedEmbeddingVectorsIndices": [-1]}, "selectedEmbeddingVectorsIndices[0]"),
    ({"selectedEmbeddingVectorsClusters": [0, 0, 0]}, "selectedEmbeddingVectorsClusters"),
    ({"selectedAnalysisMethod": "gradient-analysis"}, "selectedAnalysisMethod"),
    ({"selectedEmbeddingVectorsIndices": [1, 500], "selectedEmbeddingVectorsClusters": [0, 0]}, "selectedEmbeddingVectorsIndices"),
    ({"selectedColorMap": "rainbow"}, "selectedColorMap"),
    ({"relaylab": {"pageSize": 0}}, "relaylab.pageSize"),
    ({"relaylab": {"surprise": 1}}, "relaylab"),
    ({"projectName": "other", "projectId": 4}, "projectName"),
])
def test_bad_state_file_names_the_key_and_changes_nothing(project, change, key):
    state = custom_state(project)
    before = state.values()
    document = {**state.to_virelay_json(project), **change}
    with pytest.raises(RelaylabError) as error:
        state.from_json(json.dumps(document), projects=[project], file="saved.json")
    assert any(p.file == "saved.json" and p.path == key for p in error.value.problems), error.value.problems
    assert state.values() == before


def test_not_json_is_refused(project):
    with pytest.raises(RelaylabError, match="a JSON file"):
        vs.ViewState().from_json(b"\x89PNG not json", projects=[project])


# ------------------------------------------------------------------------------------------------ geometry


@pytest.fixture
def cloud():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=20_000), rng.normal(size=20_000) * 3
    return x.astype(np.float32), y.astype(np.float32), rng.permutation(20_000) + 100


def test_box_selection_is_exact(cloud):
    x, y, sample = cloud
    points = Points(x, y, sample)
    got = np.sort(points.sample[points.in_box(0.5, -2.0, -0.25, 1.5)])  # corners in any order
    expected = np.sort(sample[(x >= -0.25) & (x <= 0.5) & (y >= -2.0) & (y <= 1.5)])
    assert got.size > 100 and np.array_equal(got, expected)


def test_lasso_selection_equals_ray_casting(cloud):
    x, y, sample = cloud
    points = Points(x, y, sample)
    angles = np.linspace(0, 2 * np.pi, 11)[:-1]
    radii = np.where(np.arange(10) % 2, 0.6, 1.8)  # a star: concave, so a bounding box test would not do
    star = np.c_[radii * np.cos(angles) + 0.2, 3 * radii * np.sin(angles)]
    got = np.sort(points.sample[points.in_polygon(star)])
    expected = np.sort(sample[point_in_polygon(x.astype(np.float64), y.astype(np.float64), star)])
    assert got.size > 500 and np.array_equal(got, expected)


def test_nearest_equals_brute_force(cloud):
    x, y, sample = cloud
    points = Points(x, y, sample)
    rng = np.random.default_rng(1)
    for qx, qy in rng.normal(size=(40, 2)) * [1, 3]:
        rx, ry = 0.05, 0.15
        d = ((x - qx) / rx) ** 2 + ((y - qy) / ry) ** 2
        hit = points.nearest(qx, qy, rx, ry)
        if d.min() > 1:
            assert hit is None
        else:
            assert points.sample[hit] == sample[np.argmin(d)]


def test_selection_modes():
    assert combine("replace", [1, 2, 3], np.array([5, 4])).tolist() == [4, 5]
    assert combine("add", [1, 2, 3], np.array([3, 9])).tolist() == [1, 2, 3, 9]
    assert combine("subtract", [1, 2, 3], np.array([2, 9])).tolist() == [1, 3]
    assert combine("subtract", [], np.array([2])).tolist() == [] and combine("add", [7], np.array([], dtype=int)).tolist() == [7]


def test_a_scattered_selection_stays_out_of_links_but_not_out_of_the_state():
    state = vs.ViewState(selection=list(range(0, 2 * vs.MAX_LINK_RANGES + 2, 2)))
    assert not state.link_holds_selection() and "embeddingVectors" not in state.to_query()
    state.selection = list(range(100_000))  # many samples, one range: fine
    assert state.link_holds_selection() and "embeddingVectors=0-99999" in state.to_query()


# ------------------------------------------------------------------------------------------------ the view, headless


def test_view_resolves_gestures_to_sample_indices(project):
    state = vs.ViewState()
    state.apply(vs.fitted_values(project, state.values()))
    view = EmbeddingView(ProjectData(project), state)
    node = project.analyses["spectral_analysis"][state.category]
    xy = np.asarray(node["embedding"][state.embedding]["embedding"].values)
    members = vs.member_indices(node)
    box = lambda x0, y0, x1, y1: members[(xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)]
    view._on_box(bounds=(-1.0, -1.0, 1.0, 1.0))
    assert state.selection == sorted(box(-1, -1, 1, 1).tolist()) and state.selection
    view.selection_mode = "subtract"
    view._on_box(bounds=(-1.0, -1.0, 0.0, 0.0))
    assert state.selection == sorted(set(box(-1, -1, 1, 1).tolist()) - set(box(-1, -1, 0, 0).tolist()))
    view.selection_mode = "replace"
    clusters = np.asarray(node["cluster"][state.clustering].values)
    view.select_cluster(1)
    assert state.selection == sorted(members[clusters == 1].tolist())
    assert f"Cluster 1 ({int((clusters == 1).sum())})" in [b.label for b in view.cluster_buttons.objects]


def test_widget_change_keeps_the_view_consistent(project):
    """The last category has no tsne: picking it falls back to spectral, whose 8 dimensions get X/Y choosers."""
    state = vs.ViewState()
    state.apply(vs.fitted_values(project, state.values()))
    view = EmbeddingView(ProjectData(project), state)
    assert state.embedding == "tsne" and not view.x_select.visible
    state.apply({"selection": [0, 3]})
    view.category_select.value = "n00000002"
    assert (state.category, state.embedding, state.x_dim, state.y_dim, state.selection) == ("n00000002", "spectral", 0, 1, [])
    assert view.x_select.visible and view.x_select.options == list(range(8))
    view.y_select.value = 6
    assert state.y_dim == 6 and view.points.y.size == 20


def test_colour_by_correct_counts_predictions(project):
    state = vs.ViewState()
    state.apply(vs.fitted_values(project, {**state.values(), "color_by": "correct"}))
    view = EmbeddingView(ProjectData(project), state)
    node = project.analyses["spectral_analysis"][state.category]
    members = vs.member_indices(node)
    attributions = next(iter(project.attributions.values()))
    predicted = attributions["prediction"].sel(sample=members).argmax("class").values
    labels = project.inputs["label"].sel(sample=members).values
    right = int((predicted == labels).sum())
    legend = view.legend.object
    assert f"correct <span style=\"color:#777\">({right})" in legend
    assert right == len(members) or f"incorrect <span style=\"color:#777\">({len(members) - right})" in legend


def plotted_eigenvalues(view: EmbeddingView) -> tuple[str, np.ndarray, np.ndarray]:
    """The eigenvalue plot's title and its (index, eigenvalue) points, as the view hands them to Bokeh: the current
    frame of its DynamicMap (one figure per session, fed the category's eigenvalues through a Pipe)."""
    plot = view.eigen_pane.object
    if isinstance(plot, hv.DynamicMap):
        plot = plot[()]
    curve, scatter = plot.get(0), plot.get(1)
    np.testing.assert_array_equal(curve.dimension_values("eigenvalue"), scatter.dimension_values("eigenvalue"))
    return plot.opts.get().kwargs["title"], curve.dimension_values("k"), curve.dimension_values("eigenvalue")


def test_the_eigenvalue_plot_shows_the_categorys_stored_eigenvalues(make_project):
    """One point per spectral component, in the stored order (component k at k), for the category shown, also while
    another embedding (t-SNE) is plotted; each category its own."""
    import h5py

    path = make_project("eigen", n_samples=60)
    own = np.array([0.0, 0.02, 0.05, 0.3, 0.31, 0.6, 0.9, 1.2])
    with h5py.File(path.parent / "analysis-0.h5", "r+") as h5:
        h5["n00000001/embedding/spectral"].attrs["eigenvalue"] = own
        stored = np.asarray(h5["n00000000/embedding/spectral"].attrs["eigenvalue"], dtype=float)
    with open_project(path) as project:
        state = vs.ViewState()
        state.apply(vs.fitted_values(project, state.values()))
        view = EmbeddingView(ProjectData(project), state)
        assert state.embedding == "tsne" and view.eigen_pane.visible
        title, k, values = plotted_eigenvalues(view)
        assert title == "Eigenvalues (spectral)"
        np.testing.assert_array_equal(k, np.arange(8))
        np.testing.assert_allclose(values, stored)
        view.category_select.value = "n00000001"
        _, k, values = plotted_eigenvalues(view)
        np.testing.assert_array_equal(values, own)
        np.testing.assert_array_equal(values, project.analyses["spectral_analysis"]["n00000001/embedding/spectral"]["eigenvalue"].values)
        assert values.size == vs.components(project.analyses["spectral_analysis"]["n00000001"], "spectral")


def test_the_eigenvalue_plot_of_a_spray_analysis_is_smallest_first(demo_store):
    """On the demo's SpRAy (relaylab's eigensolver): every eigenvalue the analysis stored, ascending from 0."""
    with open_project(demo_store) as project:
        state = vs.ViewState()
        state.apply(vs.fitted_values(project, {**state.values(), "embedding": "spectral"}))
        view = EmbeddingView(ProjectData(project), state)
        node = project.analyses[state.analysis][state.category]
        stored = node["embedding"]["spectral"]["eigenvalue"].values
        _, k, values = plotted_eigenvalues(view)
    np.testing.assert_array_equal(values, stored)
    np.testing.assert_array_equal(k, np.arange(stored.size))
    assert stored.size == node["embedding"]["spectral"]["embedding"].shape[1] > 2
    assert np.all(np.diff(values) >= 0) and abs(values[0]) < 1e-6


# ------------------------------------------------------------------------------------------------ the app, headless


def test_sessions_do_not_share_state_and_imports_pick_their_project(make_project, tmp_path):
    from relaylab.explore.app import ExplorerApp

    paths = [make_project("first", n_samples=30), make_project("second", n_samples=30, seed=3)]
    one, two = ExplorerApp(paths), ExplorerApp(paths)
    one.views[0].embedding.select_cluster(0)
    assert one.views[0].state.selection and two.views[0].state.selection == []
    exported = json.loads(one._export().getvalue())
    two.tabs.active = 0
    exported_second = {**exported, "projectName": "second", "projectId": 1}
    two.import_state(json.dumps(exported_second).encode())
    assert two.tabs.active == 1 and two.views[1].state.selection == one.views[0].state.selection
    assert two.views[0].state.selection == []


def test_bad_import_shows_a_message_and_keeps_the_view(make_project):
    from relaylab.explore.app import ExplorerApp

    app = ExplorerApp([make_project("only", n_samples=30)])
    app.views[0].embedding.select_cluster(1)
    before = app.views[0].state.values()
    app.import_.filename = "broken.json"
    app.import_.value = json.dumps({"projectName": "only", "selectedEmbeddingVectorsIndices": [10_000]}).encode()
    assert app.alert.visible and "broken.json" in app.alert.object and "10000" in app.alert.object
    assert app.views[0].state.values() == before


def test_a_project_that_cannot_be_opened_is_reported_beside_the_others(make_project, tmp_path):
    from relaylab.explore.app import ExplorerApp

    app = ExplorerApp([make_project("fine", n_samples=30), tmp_path / "missing.yaml"])
    assert [v.project.name for v in app.views] == ["fine"]
    assert app.alert.visible and "missing.yaml" in app.alert.object


def test_a_half_written_analysis_is_left_out_with_a_message(make_project, tmp_path):
    from relaylab.data import store as zstore
    from relaylab.data.convert import convert_to_zarr
    from relaylab.explore.app import ExplorerApp

    store = convert_to_zarr(make_project("stored", n_samples=30), tmp_path / "stored.zarr", progress=False)
    zstore.begin_analysis(store, "killed_analysis")  # a job that died before writing anything
    app = ExplorerApp([store])
    assert [v.project.name for v in app.views] == ["stored"]
    assert app.views[0].embedding.analysis_select.options == {"spectral-analysis": "spectral_analysis"}
    assert app.alert.visible and "killed_analysis" in app.alert.object


def test_colour_by_a_boolean_mark_such_as_the_planted_artifact(project):
    marked = np.zeros(project.inputs.sizes["sample"], dtype=bool)
    marked[::4] = True
    project.inputs = project.inputs.assign_coords(artifact=("sample", marked))
    assert "artifact" in vs.color_options(project)
    state = vs.ViewState()
    state.apply(vs.fitted_values(project, {**state.values(), "color_by": "artifact"}))
    view = EmbeddingView(ProjectData(project), state)
    members = vs.member_indices(project.analyses["spectral_analysis"][state.category])
    n = int(marked[members].sum())
    assert 0 < n < len(members)
    assert f"artifact <span style=\"color:#777\">({n})" in view.legend.object
    assert f"no artifact <span style=\"color:#777\">({len(members) - n})" in view.legend.object
    assert vs.ViewState().from_query(state.to_query(), projects=[project]).color_by == "artifact"


@pytest.mark.parametrize("color_by", ["cluster", "correct"])
def test_the_server_draws_the_points(project, color_by):
    """Render the embedding as the server does for the browser; in the fixture every prediction is correct, so
    colouring by correct/incorrect leaves a single category (which HoloViews alone would draw as an empty image)."""
    state = vs.ViewState()
    state.apply(vs.fitted_values(project, {**state.values(), "color_by": color_by}))
    view = EmbeddingView(ProjectData(project), state)
    image = view.plot_pane.object[()]  # the points image, as rendered for the full extent (the selection is a Bokeh glyph)
    alpha = np.asarray(image.data)[..., 3] if np.asarray(image.data).ndim == 3 else image.dimension_values(3, flat=False)
    assert (np.asarray(alpha) > 0).sum() >= 10


@pytest.mark.parametrize("key, value, words", [
    ("pinned", ",".join(map(str, range(13))), ["pinned", "at most 12"]),
    ("pinned", "3,999", ["pinned", "999"]),
    ("lrpComposite", "guided_backprop", ["lrpComposite", "epsilon_plus_flat"]),
    ("attribution", "nope", ["attribution", "attribution sets"]),
    ("compareCategory", "n09999999", ["compareCategory", "categories"]),
    ("explainedLabel", "77", ["explainedLabel", "class index"]),
    ("mapPerplexity", "50", ["mapPerplexity", "10, 30, 90"]),
    ("tab", "settings", ["tab", "analysis, sample"]),
    ("inspectorColorMap", "viridis", ["inspectorColorMap", "colour maps"]),
    ("modelVersion", "p-clarc-x", ["modelVersion", "corrected model versions", "relaylab fix"]),
])
def test_the_newer_link_keys_are_checked(project, key, value, words):
    """Each of relaylab's newer share-link keys refuses what the project cannot show, naming the key; nothing changes."""
    state = custom_state(project)
    before = state.values()
    with pytest.raises(RelaylabError) as error:
        state.from_query(f"{state.to_query()}&{key}={value}", projects=[project])
    assert all(word in str(error.value) for word in words), str(error.value)
    assert state.values() == before


def test_newer_fields_stay_out_of_links_at_their_defaults(project):
    """Links stay short: the inspector's and the layer map's choices appear only once changed, pinned order is kept."""
    state = vs.ViewState()
    state.apply(vs.fitted_values(project, state.values()))
    query = state.to_query()
    assert not any(f"{key}=" in query for key in ("pinned", "tab", "lrpComposite", "mapPerplexity", "categoryOrder"))
    state.apply({"pinned": [9, 4, 17], "map_perplexity": 10})
    query = state.to_query()
    assert "pinned=9,4,17" in query and "mapPerplexity=10" in query
    assert vs.ViewState().from_query(query, projects=[project]).pinned == [9, 4, 17]
