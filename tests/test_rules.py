"""relaylab's one-term ZPlus gives zennit's ZPlus relevance, on layers after a ReLU (where it skips the negative
term) and on layers with negative inputs (where it falls back to zennit's two terms)."""

import numpy as np
import pytest
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.rules import ZPlus as ZennitZPlus

from relaylab.explain.rules import ZPlus, fast_maps


def network(relu_between: bool) -> nn.Module:
    torch.manual_seed(0)
    middle = [nn.ReLU(inplace=True)] if relu_between else []  # without it, conv 2 sees negative inputs
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *middle, nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()


def relevance(model, composite, x):
    def seed(y):
        return torch.eye(5)[y.argmax(1)] * y

    with Gradient(model=model, composite=composite) as attributor:
        _, attribution = attributor(x, seed)
    return attribution.detach().numpy()


BOX = {"low": torch.full((6, 3, 8, 8), -3.0), "high": torch.full((6, 3, 8, 8), 3.0)}
COMPOSITES = [("epsilon_plus", EpsilonPlus, {}), ("epsilon_plus_flat", EpsilonPlusFlat, {}),
              ("epsilon_alpha2_beta1", EpsilonAlpha2Beta1, {}), ("epsilon_alpha2_beta1_flat", EpsilonAlpha2Beta1Flat, {}),
              ("epsilon_gamma_box", EpsilonGammaBox, BOX)]


@pytest.mark.parametrize("relu_between", [True, False])
@pytest.mark.parametrize("name, composite, box", COMPOSITES, ids=[c[0] for c in COMPOSITES])
def test_fast_rules_give_zennits_relevance(relu_between, name, composite, box):
    model = network(relu_between)
    x = torch.randn(6, 3, 8, 8).clamp(-3, 3)
    expected = relevance(model, composite(**box), x)
    got = relevance(model, composite(**box, **fast_maps(name, **box)), x)
    assert np.abs(expected).sum() > 0
    np.testing.assert_array_equal(got, expected)


def test_fast_zplus_skips_the_negative_term_only_on_non_negative_inputs():
    """Count the modified forward passes each rule makes on a conv after a ReLU and on one without."""
    calls = []

    class Counting(nn.Conv2d):
        def forward(self, input):
            calls.append(bool((input < 0).any()))
            return super().forward(input)

    torch.manual_seed(1)
    conv = Counting(3, 4, 3)
    for rule_type, x, expected_modified in [(ZPlus, torch.rand(2, 3, 6, 6), 1), (ZPlus, torch.randn(2, 3, 6, 6), 2),
                                            (ZennitZPlus, torch.rand(2, 3, 6, 6), 2)]:
        rule = rule_type()
        handles = rule.register(conv)
        calls.clear()
        x = x.requires_grad_()
        out = conv(x)
        torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out))
        handles.remove()
        assert len(calls) - 1 == expected_modified, rule_type  # one original forward plus the modified ones


@pytest.mark.parametrize("name, composite, box", COMPOSITES, ids=[c[0] for c in COMPOSITES])
def test_fast_rules_give_zennits_relevance_through_the_resnet_canonizer(name, composite, box):
    """The canonizer path: batch norms merged into the convolutions (zennit 1.0 sets the merged weights as plain
    tensors over the parameters and the merged batch norms' eps to 0), and ResNet's residual sums."""
    import torchvision
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so the merge changes the weights
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32).clamp(-3, 3)
    box = {key: torch.full_like(x, value) for key, value in (("low", -3.0), ("high", 3.0))} if box else {}
    expected = relevance(model, composite(**box, canonizers=[ResNetCanonizer()]), x)
    got = relevance(model, composite(**box, canonizers=[ResNetCanonizer()], **fast_maps(name, **box)), x)
    assert np.abs(expected).sum() > 0
    np.testing.assert_array_equal(got, expected)
