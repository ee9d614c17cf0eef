"""`model:` describes networks as their libraries build them: smp's own decoder widths, a one-logit
(sigmoid) head, a fixed input, the input normalisation — checked without Ray or training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import segmentation_models_pytorch as smp
import torch

from fedmia.models import build_model, scenario_model
from fedmia.scenario import ModelSpec


def _scenario(**model):
    return SimpleNamespace(model=ModelSpec(**model), defenses=SimpleNamespace(root={}))


def test_a_plain_smp_unet_with_one_output_fits_with_no_adapter(tmp_path):
    """`smp.Unet(encoder_name="resnet18", classes=1)` — depth 5, smp's decoder, one logit — loads
    into `model: {encoder_depth: 5, head: sigmoid}`, and fedmia's two-class reading of its head is
    exactly the sigmoid: softmax([0, z]) = [1 - σ(z), σ(z)]."""
    torch.manual_seed(0)
    plain = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=1).eval()
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    info = SimpleNamespace(in_channels=3, num_classes=2)
    model = scenario_model(_scenario(encoder_depth=5, head="sigmoid", init=str(tmp_path / "plain.pt")), info).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out, ref = model(x), plain(x)
    assert out.shape == (2, 2, 64, 64)
    torch.testing.assert_close(out.softmax(1)[:, 1:], torch.sigmoid(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec, hint", [({}, "decoder_channels [256, 128, 64, 32, 16]"),
                                        ({"encoder_depth": 5}, "set model.head: sigmoid")])
def test_a_misfit_says_what_it_most_likely_means(tmp_path, spec, hint):
    plain = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=1)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="does not fit") as caught:
        scenario_model(_scenario(init=str(tmp_path / "plain.pt"), **spec), SimpleNamespace(in_channels=1, num_classes=2))
    assert hint in str(caught.value)


def test_normalize_is_applied_inside_the_model_and_leaves_the_state_dict_alone():
    torch.manual_seed(0)
    bare = build_model(ModelSpec(encoder_depth=2), in_channels=3, num_classes=2, seed=0).eval()
    normalised = build_model(ModelSpec(encoder_depth=2, normalize="imagenet"), in_channels=3, num_classes=2,
                             seed=0).eval()
    assert list(bare.state_dict()) == list(normalised.state_dict())
    x = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalised(x), bare((x - mean) / std))


def test_a_factory_is_called_with_only_the_arguments_it_takes():
    """`Net()` with a fixed input and one logit, as `flwr new` writes one: no channels or classes
    asked of it; `model.in_channels` is checked against the data's."""
    from fedmia.models.module import _takes

    def net():  # noqa: D401 — a factory with no arguments
        return torch.nn.Conv2d(3, 1, 3, padding=1)

    assert not _takes(net, "in_channels") and _takes(lambda **kw: None, "num_classes")
    import sys
    import types

    module = types.ModuleType("fixed_net_factory")
    module.Net = net
    sys.modules["fixed_net_factory"] = module
    try:
        spec = dict(family="module", factory="fixed_net_factory:Net", head="sigmoid", in_channels=3)
        model = scenario_model(_scenario(**spec), SimpleNamespace(in_channels=3, num_classes=2))
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 2, 16, 16)
        with pytest.raises(ValueError, match="model.in_channels: the network takes 3"):
            scenario_model(_scenario(**spec), SimpleNamespace(in_channels=1, num_classes=2))
        with pytest.raises(ValueError, match="model.head: sigmoid is one logit for a binary mask"):
            scenario_model(_scenario(**spec), SimpleNamespace(in_channels=3, num_classes=3))
    finally:
        del sys.modules["fixed_net_factory"]
