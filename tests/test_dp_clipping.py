"""Book-keeping clipping (fedmia/defenses/clipping.py) against per-sample gradients from torch.func."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedmia.data.datasets import load_dataset
from fedmia.defenses import clipping
from fedmia.defenses.canaries import draw_canaries, trainable_dimension
from fedmia.defenses.dp import to_dp_compatible, train_local_dp
from fedmia.models import build_model, get_weights
from fedmia.scenario import ModelSpec


class SmallNet(nn.Module):
    """Every layer kind: a strided conv with bias, a dilated depthwise conv and a pointwise conv
    with bias (per-record gradients), GroupNorm, a conv and a Linear on few positions (ghost
    norms)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.norm = nn.GroupNorm(4, 8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.deep = nn.Conv2d(8, 64, 3, stride=2, padding=1)
        self.mix = nn.Linear(64, 16)

    def forward(self, x):
        h = self.pointwise(F.relu(self.norm(self.depthwise(self.stem(x))), inplace=True))
        h = self.deep(h)  # (B, 64, 2, 2): 4 positions, ghost norm
        return self.mix(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(len(x), 16, 2, 2)


def _reference(model, x, y, max_norm):
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_of_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], 1).norm(dim=1)
    factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("b,b...->...", factors, g) for n, g in grads.items()}, norms


@pytest.mark.parametrize("make", [
    lambda: SmallNet(),
    lambda: to_dp_compatible(build_model(ModelSpec(encoder="resnet18", encoder_depth=3), 1, 2, seed=0)),
    lambda: to_dp_compatible(build_model(ModelSpec(encoder="mobilenet_v2", encoder_depth=3), 1, 2, seed=0)),
], ids=["layers", "resnet18", "mobilenet_v2"])
def test_clipped_sum_equals_the_per_sample_reference(make):
    torch.manual_seed(0)
    model = make().train()
    assert clipping.supports(model)
    channels = 2 if isinstance(model, SmallNet) else 1
    size = 8 if isinstance(model, SmallNet) else 32
    x = torch.randn(5, channels, size, size)
    out_size = 2 if isinstance(model, SmallNet) else size
    y = torch.randint(0, 3 if isinstance(model, SmallNet) else 2, (5, out_size, out_size))
    expected, expected_norms = _reference(model, x, y, max_norm=0.5)
    assert (expected_norms > 0.5).any() and (expected_norms.min() < expected_norms.max())  # some records clipped

    sums, losses, norms = clipping.clipped_gradient_sum(
        model, x, lambda out: F.cross_entropy(out, y, reduction="none").flatten(1).mean(1), max_grad_norm=0.5)
    torch.testing.assert_close(norms, expected_norms, rtol=1e-4, atol=1e-6)
    assert set(sums) == set(expected)
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(sums[name], value, rtol=1e-3, atol=1e-5 * scale, msg=name)
    assert losses.shape == (5,)
    assert all(p.requires_grad for p in model.parameters())  # handed back trainable


def test_dropout_models_clip_per_record():
    """FPN carries Dropout2d, which torch.func's vmap refuses in training; book-keeping runs it,
    and (dropout off, to compare) its sums equal per-record autograd's one record at a time."""
    torch.manual_seed(0)
    model = to_dp_compatible(build_model(ModelSpec(arch="FPN", encoder="resnet18", encoder_depth=5), 1, 2, seed=0))
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules()) and clipping.supports(model)
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 2, (4, 32, 32))

    def loss(out):
        return F.cross_entropy(out, y, reduction="none").flatten(1).mean(1)

    clipping.clipped_gradient_sum(model.train(), x, loss, max_grad_norm=0.5)  # dropout on: runs
    for module in model.modules():
        if isinstance(module, nn.Dropout2d):
            module.p = 0.0
    sums, _, norms = clipping.clipped_gradient_sum(model, x, loss, max_grad_norm=0.5)
    grads = []
    for i in range(4):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    expected_norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in one.values())) for one in grads])
    torch.testing.assert_close(norms, expected_norms, rtol=1e-4, atol=1e-6)
    factors = (0.5 / (expected_norms + 1e-6)).clamp(max=1.0)
    scale = max(float(g.abs().max()) for g in grads[0].values())
    for name in grads[0]:
        expected = sum(f * one[name] for f, one in zip(factors, grads))
        torch.testing.assert_close(sums[name], expected, rtol=1e-3, atol=1e-5 * scale, msg=name)


def test_a_layer_used_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return torch.cat([self.conv(self.conv(x)), -x], 1)

    x, y = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    with pytest.raises(RuntimeError, match="ran 2 times"):
        clipping.clipped_gradient_sum(Twice(), x, lambda out: F.cross_entropy(out, y, reduction="none").mean((1, 2)), 1.0)


def test_dp_sgd_engines_agree_step_for_step():
    """Same seed, same Poisson batches, same noise, canaries included: the two engines train the
    same model (up to float error), so book-keeping changes the speed and not the mechanism."""
    records, _ = load_dataset("shapes", records=12, image_size=16, seed=0, options={"binary": True})
    trained = {}
    for engine in ("bookkeeping", "torch.func"):
        model = to_dp_compatible(build_model(ModelSpec(encoder="resnet18", encoder_depth=2), 1, 2, seed=0))
        drawn = draw_canaries(0, 4, trainable_dimension(model), norm=2.0)
        stats = train_local_dp(model, records, epochs=2, batch_size=4, lr=0.05, optimizer_name="sgd",
                               noise_multiplier=0.5, max_grad_norm=1.0, seed=3, device=torch.device("cpu"),
                               canaries=drawn.present(), canary_norm=drawn.norm, label_smoothing=0.1,
                               engine=engine)
        trained[engine] = (get_weights(model), stats)
    (fast, fast_stats), (reference, reference_stats) = trained["bookkeeping"], trained["torch.func"]
    assert fast_stats["dp-steps"] == reference_stats["dp-steps"] == 6
    assert fast_stats["train-loss"] == pytest.approx(reference_stats["train-loss"], rel=1e-4)
    initial = get_weights(to_dp_compatible(build_model(ModelSpec(encoder="resnet18", encoder_depth=2), 1, 2, seed=0)))
    moved = max(float(np.abs(r - i).max()) for r, i in zip(reference, initial))
    assert moved > 1e-2
    assert max(float(np.abs(f - r).max()) for f, r in zip(fast, reference)) < 1e-3 * moved


def test_models_with_other_layers_take_the_torch_func_engine():
    model = build_model(ModelSpec(encoder="resnet18", encoder_depth=2), 1, 2, seed=0)  # BatchNorm
    assert not clipping.supports(model)
    records, _ = load_dataset("shapes", records=4, image_size=16, seed=0, options={"binary": True})
    with pytest.raises(ValueError, match="book-keeping"):
        train_local_dp(model, records, epochs=1, batch_size=2, lr=0.01, optimizer_name="sgd",
                       noise_multiplier=1.0, max_grad_norm=1.0, seed=0, device=torch.device("cpu"),
                       engine="bookkeeping")
