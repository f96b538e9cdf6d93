"""Fix and verify on a store (relaylab.fix.job, `relaylab fix/verify/versions`): the demo's shortcut removed into a
model version that reloads and reproduces its verification; bad input refused before any activation or training;
LRP through a P-ClArC projection."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from relaylab.data import store as zstore
from relaylab.errors import RelaylabError
from relaylab.explain import models

NUMBERS = ("accuracy", "accuracy_artifact_samples", "flip_rate", "relevance_in_mask", "spray_auroc", "census_score", "tcav_score",
           "tcav_derivative")


@pytest.fixture
def demo_copy(demo_store, tmp_path):
    """A private copy of the demo's store and weights (fix records versions into the store's metadata)."""
    folder = tmp_path / "demo"
    folder.mkdir()
    shutil.copytree(demo_store, folder / demo_store.name)
    shutil.copy(demo_store.parent / "demo-cnn.pt", folder)
    return folder / demo_store.name


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_p_clarc_removes_the_demo_shortcut_and_the_reloaded_version_reproduces_its_verification(demo_copy):
    from relaylab.explain.jobs import attribute
    from relaylab.fix.job import fix, verify

    original_weights = digest(demo_copy.parent / "demo-cnn.pt")
    entry = fix(demo_copy, category="3", progress=False)  # the census's top cluster of class 3, layer chosen by the search
    version = entry["version"]
    assert version == "p-clarc-digit-3" and entry["cav"]["accuracy"] >= 0.95
    truth = zstore.open_group(demo_copy, "inputs", chunks=None)["artifact"].values
    chosen = np.asarray(entry["selection"]["samples"])
    assert truth[chosen].mean() >= 0.9 and truth[chosen].sum() >= 0.9 * truth.sum()  # the census found the square's samples
    result, figures = verify(demo_copy, version, progress=False)
    assert result["original"]["flip_rate"] >= 0.5 and result["corrected"]["flip_rate"] <= 0.05
    assert abs(result["change"]["accuracy_points"]) <= 1.0
    assert result["change"]["relevance_in_mask_reduction"] >= 0.8
    assert result["corrected"]["tcav_score"] == 0.0 < result["original"]["tcav_score"]  # the projection removes the direction exactly
    # the estimated artifact is the planted white square (rows 0:8, columns 0:8 of 32 × 32)
    mask = figures["mask"] > 0.5
    assert mask[:8, :8].mean() >= 0.8 and mask[:8, :8].sum() >= 0.9 * mask.sum()
    # recorded in the store; the original's weights untouched, the version's beside the store
    recorded = models.model_versions(demo_copy)[version]["verification"]
    assert recorded["corrected"] == result["corrected"]
    assert digest(demo_copy.parent / "demo-cnn.pt") == original_weights
    assert (demo_copy.parent / f"{demo_copy.name}.models" / f"{version}.pt").is_file()
    # reloaded from the store alone, the version reproduces its verification
    again, _ = verify(demo_copy, version, progress=False)
    for side in ("original", "corrected"):
        for key in NUMBERS:
            assert again[side][key] == pytest.approx(recorded[side][key], rel=1e-6, abs=1e-9), (side, key)
    # and the attribute job explains with it: the stored heatmaps of the artifact samples leave the square
    attribute(demo_copy, name="lrp-fixed", target="true_label", model=version, progress=False)
    ds = zstore.open_group(demo_copy, "attributions/lrp-fixed", chunks=None)
    assert ds.attrs["model_version"] == version
    from relaylab.fix.verify import relevance_in_mask

    square = np.zeros((32, 32), bool)
    square[:8, :8] = True
    before = relevance_in_mask(zstore.open_group(demo_copy, "attributions/lrp", chunks=None)["attribution"].values[truth], square).mean()
    after = relevance_in_mask(ds["attribution"].values[truth], square).mean()
    assert after <= 0.2 * before, (before, after)


def test_rr_clarc_fine_tunes_a_version_that_no_longer_follows_the_square(demo_copy, cli):
    run = cli("fix", str(demo_copy), "--category", "digit-3", "--cluster", "kmeans-02:1", "--method", "rr-clarc",
              "--layer", "features.3", "--version", "rr", "-q")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    result = models.model_versions(demo_copy)["rr"]["verification"]
    assert result["corrected"]["flip_rate"] <= 0.1 < result["original"]["flip_rate"]
    assert result["corrected"]["accuracy"] >= result["original"]["accuracy"] - 0.01
    assert "flip rate" in out and "rr: rr-clarc at features.3, category digit-3" in out
    report = json.loads((demo_copy.parent / "project.verify-rr" / "verification.json").read_text())
    assert report["corrected"] == result["corrected"]
    from relaylab.data.schema import schema_problems

    assert not schema_problems("verification", report, "verification.json")
    assert schema_problems("verification", {**report, "method": "x-clarc"}, "verification.json")  # the schema does check
    # the fine-tuned weights are the version's own: they differ from the original's
    spec = models.model_spec_of(demo_copy, "rr")
    tuned, original = models.load_model(spec), models.load_model(models.model_spec_of(demo_copy))
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), original.state_dict().values()))
    run = cli("versions", str(demo_copy))
    assert run.returncode == 0 and run.stdout.splitlines()[0].startswith("original:") and "rr: " in run.stdout and "flip rate" in run.stdout


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any activation is computed or any weight is trained."""
    import relaylab.fix.job as job

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the input was checked")
    for name in ("layer_outputs", "rr_clarc", "fine_tune", "learn_cav"):
        monkeypatch.setattr(job, name, forbidden)


@pytest.mark.parametrize("case", ["empty", "one", "other-category", "state-of-another-category", "unknown-layer", "unknown-cluster",
                                  "everything"])
def test_bad_input_is_refused_before_any_work(demo_copy, tmp_path, no_training, case):
    from relaylab.fix.job import fix

    inputs = zstore.open_group(demo_copy, "inputs", chunks=None)
    labels, samples = inputs["label"].values, inputs["sample"].values
    selection = tmp_path / "selection.json"
    kwargs = {"category": "3", "method": "rr-clarc"}
    expect = ""
    if case == "empty":
        selection.write_text("[]")
        kwargs["selection"], expect = selection, "empty selection"
    elif case == "one":
        selection.write_text(json.dumps(samples[labels == 3][:1].tolist()))
        kwargs["selection"], expect = selection, "at least 2 samples carrying the artifact"
    elif case == "other-category":
        selection.write_text(json.dumps(samples[labels == 5][:10].tolist()))
        kwargs["selection"], expect = selection, "are not (their labels: 5)"
    elif case == "state-of-another-category":
        selection.write_text(json.dumps({"selectedAnalysisCategory": "digit-5", "selectedEmbeddingVectorsIndices": samples[labels == 5][:5].tolist()}))
        kwargs["selection"], expect = selection, "'digit-5'"
    elif case == "unknown-layer":
        kwargs["cluster"], kwargs["layer"], expect = "kmeans-02:1", "features.99", "features.99"
    elif case == "unknown-cluster":
        kwargs["cluster"], expect = "kmeans-02:7", "0 ("
    else:
        selection.write_text(json.dumps(samples[labels == 3].tolist()))
        kwargs["selection"], expect = selection, "at least 2 other samples"
    with pytest.raises(RelaylabError) as error:
        fix(demo_copy, progress=False, **kwargs)
    assert expect in str(error.value)
    assert not (demo_copy.parent / f"{demo_copy.name}.models").exists()
    assert models.VERSIONS not in zstore.store_metadata(demo_copy)


def test_the_cli_refuses_an_unknown_layer_in_one_line(demo_copy, cli):
    run = cli("fix", str(demo_copy), "--category", "3", "--layer", "features.99", "-q")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "features.99" in lines[0] and "e.g. features." in lines[0]  # the nearest layer names are offered


def test_lrp_through_a_projection_follows_the_projected_forward_pass():
    """zennit's rule on the projected layer must see the gradient behind the projection: the LRP of a model with a
    P-ClArC hook equals that of the same model with the projection as a module of its own after the layer."""
    from relaylab.explain.attribution import Explainer
    from relaylab.fix.cav import CAV
    from relaylab.fix.clarc import Projection, add_projection

    torch.manual_seed(0)
    conv, linear = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 6 * 6, 3)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=4 * 6 * 6).astype(np.float32)
    direction /= np.linalg.norm(direction)
    cav = CAV(direction=direction, reference=rng.normal(size=4 * 6 * 6).astype(np.float32), accuracy=1.0, method="pattern",
              n_artifact=2, n_clean=2)
    hooked = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear)
    add_projection(hooked, "0", cav)
    explicit = nn.Sequential(conv, Projection(cav), nn.ReLU(), nn.Flatten(), linear)
    x = torch.rand(5, 1, 6, 6)
    target = torch.tensor([0, 1, 2, 0, 1])
    with Explainer(hooked, "epsilon_plus") as explain:
        hooked_map, hooked_logits = explain(x, target)
    with Explainer(explicit, "epsilon_plus") as explain:
        explicit_map, explicit_logits = explain(x, target)
    assert torch.allclose(hooked_logits, explicit_logits, atol=1e-5)
    assert torch.allclose(hooked_map, explicit_map, atol=1e-5)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))  # the same weights, no hook
    plain.load_state_dict(explicit[:1].state_dict() | {f"3.{k}": v for k, v in linear.state_dict().items()})
    with Explainer(plain, "epsilon_plus") as explain:
        plain_map, _ = explain(x, target)
    assert not torch.allclose(plain_map, hooked_map, atol=1e-3)  # the projection does change the explanation


def test_a_clarc_fine_tunes_with_the_estimated_artifact_on_every_class(demo_copy):
    from relaylab.fix.job import fix, verify

    entry = fix(demo_copy, category="3", method="a-clarc", layer="features.3", progress=False)
    assert entry["version"] == "a-clarc-digit-3" and entry["training"]["epochs"] == 5
    result, _ = verify(demo_copy, entry["version"], progress=False)
    assert result["corrected"]["flip_rate"] <= 0.5 * result["original"]["flip_rate"]
    assert result["corrected"]["accuracy"] >= result["original"]["accuracy"] - 0.02


def test_bad_versions_and_artifact_files_are_refused_naming_the_file(demo_copy, tmp_path):
    """verify's inputs (the version, the artifact image and mask) and fix's version name: one clear error each, and
    nothing recorded by a refused call."""
    from PIL import Image

    from relaylab.fix.job import fix, verify

    fix(demo_copy, category="3", layer="features.0", version="v1", progress=False)
    recorded = models.model_versions(demo_copy)["v1"]
    for name, words in (("original", "not 'original'"), ("bad name!", "letters, digits"), ("v1", "it exists")):
        with pytest.raises(RelaylabError) as error:
            fix(demo_copy, category="3", layer="features.0", version=name, progress=False)
        assert words in str(error.value)
    with pytest.raises(RelaylabError) as error:
        verify(demo_copy, "v2", progress=False)
    assert "model_versions" in str(error.value) and "original, v1" in str(error.value)
    good, small, black = tmp_path / "good.png", tmp_path / "small.png", tmp_path / "black.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(good)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(black)
    for image, mask, words in ((good, None, "both an artifact image and its mask"), (small, good, "small.png"),
                               (good, small, "inputs' size 32×32"), (good, black, "white (artifact) pixels"),
                               (tmp_path / "missing.png", good, "missing.png")):
        with pytest.raises(RelaylabError) as error:
            verify(demo_copy, "v1", artifact_image=image, artifact_mask=mask, progress=False)
        assert words in str(error.value), str(error.value)
    assert models.model_versions(demo_copy)["v1"] == recorded  # no verification recorded by a refused call
