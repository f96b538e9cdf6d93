"""Grad-CAM, LayerCAM and Focus LayerCAM against formulas written out by hand for a network whose gradients have a
closed form, against numbers worked out on paper for tiny tensors, and on a random CNN.

Network: conv1 (1→3, 3×3, pad 1) → ReLU(inplace) → AvgPool 2×2 → conv2 (3→4, 1×1) → global average pool → fc (4→5),
on 6×6 inputs. With y = fc(mean_ij conv2(P)), the gradients are

    dy_c/dconv2_k[i, j] = W[c, k] / 9                        (3×3 after the pool)
    dy_c/dconv1_m[i, j] = [conv1_m[i, j] > 0] · V[c, m] / 4   with V[c, m] = sum_k W[c, k] K2[k, m] / 9

so every CAM can be computed with NumPy from the weights alone. conv1 is followed by an in-place ReLU, which checks
that the recorded activation is the pre-ReLU output; conv2 is at half resolution, which checks the bilinear upsampling.
Each channel's gradient has one sign here, so Focus LayerCAM equals LayerCAM on this network; the tiny-tensor and
random-CNN tests are where the two part.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from relaylab.errors import RelaylabError
from relaylab.explain.cam import METHODS, cam, cam_map, capture, cams

from .helpers import TinyNet

# Bilinear 3 → 6 with half-pixel centres (align_corners=False): output i samples the input at (i + 0.5) / 2 - 0.5,
# clamped to [0, 2].
UPSAMPLE = np.array([[1, 0, 0], [0.75, 0.25, 0], [0.25, 0.75, 0], [0, 0.75, 0.25], [0, 0.25, 0.75], [0, 0, 1]])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 5)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv2(self.pool(self.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(3)
    model = Tiny().eval()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen weights, as in a loaded model: CAMs must still get their gradients
    return model


def by_hand(model: Tiny, x: np.ndarray, targets: list[int]) -> dict[tuple[str, str], np.ndarray]:
    k1, b1 = model.conv1.weight.numpy()[:, 0], model.conv1.bias.numpy()  # (3, 3, 3), (3,)
    k2, b2 = model.conv2.weight.numpy()[:, :, 0, 0], model.conv2.bias.numpy()  # (4, 3), (4,)
    w = model.fc.weight.numpy()  # (5, 4)
    out = {}
    for n, c in enumerate(targets):
        padded = np.pad(x[n, 0], 1)
        conv1 = np.array([[[(padded[i:i + 3, j:j + 3] * k1[m]).sum() + b1[m] for j in range(6)] for i in range(6)] for m in range(3)])
        pooled = np.maximum(conv1, 0).reshape(3, 3, 2, 3, 2).mean(axis=(2, 4))
        conv2 = np.einsum("km,mij->kij", k2, pooled) + b2[:, None, None]
        grad2 = np.broadcast_to((w[c] / 9)[:, None, None], conv2.shape)
        v = w[c] @ k2 / 9
        grad1 = (conv1 > 0) * (v / 4)[:, None, None]
        for layer, a, g in (("conv1", conv1, grad1), ("conv2", conv2, grad2)):
            gradcam = np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(0), 0)
            layercam = np.maximum((np.maximum(g, 0) * a).sum(0), 0)
            focus = np.maximum((np.maximum(g, 0) * a)[g.mean(axis=(1, 2)) > 0].sum(0), 0)
            for method, m in (("gradcam", gradcam), ("layercam", layercam), ("focus_layercam", focus)):
                if m.shape != (6, 6):
                    m = UPSAMPLE @ m @ UPSAMPLE.T
                out.setdefault((layer, method), []).append(m)
    return {key: np.stack(maps) for key, maps in out.items()}


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
@pytest.mark.parametrize("method", METHODS)
def test_cam_matches_the_formula_per_sample_target(net, layer, method):
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    targets = [0, 3, 1]
    expected = by_hand(net, x.numpy(), targets)[layer, method]
    maps, logits = cam(net, x, torch.tensor(targets), layer, method)
    assert maps.shape == (3, 6, 6) and maps.dtype == torch.float32
    assert (expected > 0).any()
    np.testing.assert_allclose(maps.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits.numpy(), net(x).numpy(), rtol=1e-6)
    assert not np.allclose(expected, by_hand(net, x.numpy(), [2, 4, 0])[layer, method])  # the targets matter


def test_one_pass_serves_all_layers_and_methods(net):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([4, 2])
    result = cams(net, x, targets, ["conv1", "conv2"], keep=["fc"])
    expected = by_hand(net, x.numpy(), targets.tolist())
    assert set(result.maps) == set(expected)
    assert any((value == 0).any() for value in expected.values())  # the final ReLU cuts something somewhere
    for key, value in expected.items():
        np.testing.assert_allclose(result.maps[key].numpy(), value, rtol=1e-5, atol=1e-6)
    assert result.activations["fc"].shape == (2, 5)
    # the recorded conv1 output is pre-ReLU although the ReLU after it works in place
    assert (result.activations["conv1"] < 0).any()


def test_cam_map_on_tiny_tensors_worked_out_by_hand():
    """Two samples, two channels, 2×2. Sample 0: channel 0 has Grad-CAM weight +0.5, channel 1 weight -1 but a positive
    gradient at (0, 0); sample 1: channel 0 weight -0.25 (positive gradient at (1, 1)), channel 1 weight +1. So Focus
    LayerCAM drops channel 1 of sample 0 and channel 0 of sample 1, which LayerCAM keeps; the activation -4 makes the
    final clamp matter."""
    a = torch.tensor([[[[1., 2.], [3., -4.]], [[2., 1.], [1., 1.]]]] * 2)
    g = torch.tensor([[[[1., -1.], [0., 2.]], [[3., -2.], [-2., -3.]]],
                      [[[-1., -1.], [-1., 2.]], [[3., -2.], [2., 1.]]]])
    expected = {  # per sample: ReLU of the channel terms' sum, each term worked out on paper
        "gradcam": [[[0, 0], [0.5, 0]], [[1.75, 0.5], [0.25, 2]]],  # 0.5·A0 - A1;  -0.25·A0 + A1
        "layercam": [[[7, 0], [0, 0]], [[6, 0], [2, 0]]],  # [[1,0],[0,-8]] + [[6,0],[0,0]];  [[0,0],[0,-8]] + [[6,0],[2,1]]
        "focus_layercam": [[[1, 0], [0, 0]], [[6, 0], [2, 1]]],  # [[1,0],[0,-8]] alone;  [[6,0],[2,1]] alone
    }
    for method, maps in expected.items():
        np.testing.assert_array_equal(cam_map(a, g, method).numpy(), np.array(maps, dtype=np.float32), err_msg=method)
    with pytest.raises(RelaylabError, match="focus_layercam"):
        cam_map(a, g, "scorecam")


def test_focus_layercam_differs_on_a_random_cnn():
    """A random CNN on random inputs has channels that oppose the class on average but have positive gradients
    somewhere; Focus LayerCAM leaves them out, so it differs from LayerCAM (and Grad-CAM) and equals the formula."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([0, 1, 2, 3])
    with capture(model, ["features.0"]) as outputs:
        x_grad = x.clone().requires_grad_(True)
        logits = model(x_grad)
        (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), [outputs["features.0"]])
    a, g = outputs["features.0"].detach().numpy(), gradient.numpy()
    supporting = g.mean(axis=(2, 3)) > 0  # (N, K)
    assert (~supporting & (g > 0).any(axis=(2, 3))).any()  # the premise: opposing channels with positive gradients
    focus = np.maximum((np.maximum(g, 0) * a * supporting[:, :, None, None]).sum(1), 0)  # features.0 is at input size

    result = cams(model, x, targets, ["features.0", "features.3"])
    for layer in ("features.0", "features.3"):
        got = result.maps[layer, "focus_layercam"].numpy()
        assert got.any(), layer
        assert not np.allclose(got, result.maps[layer, "layercam"].numpy()), layer
        assert not np.allclose(got, result.maps[layer, "gradcam"].numpy()), layer
    np.testing.assert_allclose(result.maps["features.0", "focus_layercam"].numpy(), focus, rtol=1e-5, atol=1e-6)


def test_unknown_layer_names_it_and_known_ones(net):
    with pytest.raises(RelaylabError) as error:
        cam(net, torch.zeros(1, 1, 6, 6), torch.tensor([0]), "features.99")
    assert "features.99" in str(error.value) and "conv1" in str(error.value)


def test_bad_inputs(net):
    x = torch.zeros(1, 1, 6, 6)
    with pytest.raises(RelaylabError, match="spatial output"):
        cam(net, x, torch.tensor([0]), "fc")
    with pytest.raises(RelaylabError, match="method"):
        cam(net, x, torch.tensor([0]), "conv1", "scorecam")
    with pytest.raises(RelaylabError, match="class indices"):
        cam(net, x, torch.tensor([5]), "conv1")
    with pytest.raises(RelaylabError, match="forward pass calls"):
        cam(net, x, torch.tensor([0]), "unused")
    with pytest.raises(RelaylabError, match="N target classes"):
        cam(net, x, torch.tensor([0, 1]), "conv1")
