"""Fix (relaylab.fix): the artifact's direction learned from activations, and the P-ClArC projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from relaylab.fix.cav import learn_cav
from relaylab.fix.clarc import Projection, add_projection


def planted(n: int = 2000, d: int = 64, fraction: float = 0.2, strength: float = 3.0, seed: int = 0):
    """Activations with correlated noise (a few shared factors, as real layers have) and a planted direction added to
    the artifact samples; (x, artifact, direction)."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(5, d)) * 0.5
    x = rng.normal(size=(n, 5)) @ factors + rng.normal(size=(n, d))
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    artifact = rng.random(n) < fraction
    x[artifact] += strength * direction
    return x.astype(np.float32), artifact, direction


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_learned_direction_is_the_planted_one(seed):
    x, artifact, direction = planted(seed=seed)
    cav = learn_cav(x, artifact)
    assert float(cav.direction @ direction) >= 0.95
    assert cav.accuracy > 0.8 and cav.n_artifact == artifact.sum()  # chance is 0.5
    assert np.linalg.norm(cav.direction) == pytest.approx(1.0, abs=1e-5)


def test_the_pattern_follows_the_artifact_where_the_filter_turns_away_from_a_distractor():
    """A distractor sharing a dimension with the artifact's direction (Haufe et al.'s example): the classifier's
    weights must cancel it and tilt away from the artifact; the pattern does not."""
    rng = np.random.default_rng(3)
    n, d = 3000, 8
    artifact = rng.random(n) < 0.3
    x = rng.normal(scale=0.3, size=(n, d))
    x[:, 0] += 2.0 * artifact
    distractor = rng.normal(scale=3.0, size=n)
    x[:, 0] += distractor
    x[:, 1] += distractor
    truth = np.eye(d)[0]
    pattern, filter_ = learn_cav(x, artifact), learn_cav(x, artifact, method="filter")
    assert float(pattern.direction @ truth) >= 0.95
    assert float(filter_.direction @ truth) < float(pattern.direction @ truth) - 0.1


def test_too_few_samples_or_no_difference_is_refused():
    x, artifact, _ = planted(n=50)
    with pytest.raises(ValueError, match="at least 2 artifact"):
        learn_cav(x, np.zeros(50, bool))
    with pytest.raises(ValueError, match="one bool per sample"):
        learn_cav(x, artifact[:10])


def small_model(d: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, d), nn.ReLU(), nn.Linear(d, d), nn.Linear(d, 3))


def test_the_projection_changes_no_output_without_the_directions_component():
    x, artifact, _ = planted()
    cav = learn_cav(x, artifact)
    model = small_model()
    inputs = torch.randn(32, 16)
    with torch.no_grad():
        hidden = model[:3](inputs)
        # the same activations moved into the hyperplane through the clean mean orthogonal to the direction
        v, z = torch.as_tensor(cav.direction), torch.as_tensor(cav.reference)
        on_plane = hidden - ((hidden - z) @ v)[:, None] * v[None]
        before = model[3](on_plane)
        handle = add_projection(model, "2", cav)
        after = model[3](model[2](model[:2](inputs)))  # the hook runs on layer "2"'s output
        assert torch.allclose(before, after, atol=1e-5)
        # and an activation with a component along the direction is moved back to the plane
        shifted = hidden + 5 * v
        projected = Projection(cav)(shifted)
        assert torch.allclose(projected, on_plane, atol=1e-4)
        handle.remove()
        assert torch.equal(model(inputs), model[3](hidden))  # removed: the original model again


def test_a_layer_that_does_not_exist_is_named():
    x, artifact, _ = planted()
    with pytest.raises(KeyError, match="nope"):
        add_projection(small_model(), "nope", learn_cav(x, artifact))


# ------------------------------------------------------------------------------------------------------ verification

def test_paste_draws_only_inside_the_mask():
    from relaylab.fix.verify import paste

    images = np.random.default_rng(0).random((3, 2, 8, 8)).astype(np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[:2, :2] = 1
    out = paste(images, np.ones((2, 8, 8), np.float32), mask)
    assert (out[:, :, :2, :2] == 1).all()
    np.testing.assert_array_equal(out[:, :, 2:, :], images[:, :, 2:, :])
    np.testing.assert_array_equal(paste(images, np.ones((2, 8, 8), np.float32), np.zeros((8, 8))), images)


def test_flip_rate_counts_right_answers_of_other_classes_turned_into_the_target():
    from relaylab.fix.verify import flip_rate

    rng = np.random.default_rng(1)
    images = rng.random((200, 1, 8, 8)).astype(np.float32) * 0.5
    labels = rng.integers(0, 3, 200)
    corner = np.zeros((8, 8), np.float32)
    corner[0, 0] = 1

    def shortcut(x):  # the truth, unless the corner pixel is bright: then class 2
        return np.where(x[:, 0, 0, 0] > 0.9, 2, truth_of(x))

    lookup = {images[i].tobytes(): labels[i] for i in range(200)}

    def truth_of(x):
        return np.array([lookup.get(sample.tobytes(), -1) for sample in x])

    assert flip_rate(shortcut, images, labels, 2, np.ones((1, 8, 8), np.float32), corner) == 1.0
    assert flip_rate(truth_of, images, labels, 2, np.ones((1, 8, 8), np.float32), corner) == 0.0


def test_relevance_in_mask_is_the_positive_share_inside():
    from relaylab.fix.verify import relevance_in_mask

    maps = np.zeros((2, 1, 4, 4))
    maps[0, 0, 0, 0], maps[0, 0, 3, 3], maps[0, 0, 1, 1] = 3.0, 1.0, -5.0  # negative relevance does not count
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    np.testing.assert_allclose(relevance_in_mask(maps, mask), [0.75, 0.0])


def test_tcav_of_a_linear_readout_follows_the_sign_of_its_weights_along_the_direction():
    from relaylab.fix.verify import tcav

    model = nn.Sequential(nn.Linear(4, 3), nn.Identity(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 1.0]]))
    inputs = torch.randn(10, 4)
    score, derivative = tcav(model, "1", np.array([1.0, 0.0, 0.0]), inputs, target=0)
    assert score == 1.0 and derivative == pytest.approx(1.0)
    score, derivative = tcav(model, "1", np.array([0.0, 1.0, 0.0]), inputs, target=0)
    assert score == 0.0 and derivative == pytest.approx(-2.0)


def test_rr_clarc_makes_the_class_output_insensitive_along_the_direction_and_keeps_the_accuracy():
    """A model that learned a shortcut (a feature that is on for class 1 only in training): after RR-ClArC its class-1
    logit no longer rises along that feature's direction in the hidden layer, and clean accuracy stays."""
    from relaylab.demo.model import fit
    from relaylab.fix.clarc import rr_clarc
    from relaylab.fix.verify import tcav

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 1.5 * (2 * y - 1)  # the real signal
    x[:, 5] = 3.0 * y  # the shortcut: perfect in training
    make = lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))  # noqa: E731
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = fit(make, xt, yt, seed=0, epochs=30, batch_size=64, lr=1e-2)
    with torch.no_grad():
        hidden = model[:2](xt).numpy()
    cav = learn_cav(hidden, x[:, 5] > 1.5)
    before = tcav(model, "1", cav.direction, xt, target=1)[1]
    clean = x.copy()
    clean[:, 5] = 0.0
    accuracy = lambda m: float((m(torch.as_tensor(clean)).argmax(1).numpy() == y).mean())  # noqa: E731
    shortcut_accuracy = accuracy(model)
    rr_clarc(model, "1", cav, xt, yt, strength=100.0, epochs=20, lr=3e-3)
    after = tcav(model, "1", cav.direction, xt, target=1)[1]
    assert abs(after) < 0.2 * abs(before), (before, after)
    # on samples without the shortcut the corrected model does no worse than the one that relied on it
    assert accuracy(model) >= shortcut_accuracy, (shortcut_accuracy, accuracy(model))


def test_a_weak_shortcut_is_pointed_out():
    from relaylab.fix.report import weak_shortcut

    result = {"category": "c1", "original": {"flip_rate": 0.019, "accuracy": 0.994}, "corrected": {"flip_rate": 0.0, "accuracy": 0.912}}
    note = weak_shortcut(result)
    assert note is not None and "1.9%" in note and "0.994 → 0.912" in note
    assert weak_shortcut({**result, "original": {"flip_rate": 0.84, "accuracy": 0.975}}) is None  # a real shortcut: no note
    assert weak_shortcut({**result, "original": {"flip_rate": None, "accuracy": 0.975}}) is None  # nothing measured
