"""smp model factory, the weights bridge, and the transcript's save/load."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from fedmia.models import build_model, get_weights, set_weights
from fedmia.scenario import ModelSpec
from fedmia.transcript import Reply, RoundView, Transcript


@pytest.mark.parametrize("arch, encoder, depth", [
    ("Unet", "resnet18", 3), ("Unet", "mobilenet_v2", 3), ("UnetPlusPlus", "resnet18", 2),
    ("DeepLabV3Plus", "resnet18", 4), ("FPN", "resnet18", 5), ("Linknet", "resnet18", 3),
])
def test_models_shape_and_every_parameter_used(arch, encoder, depth):
    model = build_model(ModelSpec(arch=arch, encoder=encoder, encoder_depth=depth), in_channels=1, num_classes=3)
    x = torch.rand(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # pruned encoder stages: Opacus and the transcript need this


def test_shallow_resnet_is_pruned_to_what_it_uses():
    small = build_model(ModelSpec(encoder_depth=3), in_channels=1, num_classes=2)
    assert sum(p.numel() for p in small.parameters()) < 2_000_000  # 11.4M before pruning


def test_same_seed_same_weights_and_roundtrip():
    spec = ModelSpec(encoder_depth=2)
    a = get_weights(build_model(spec, 1, 2, seed=3))
    b = get_weights(build_model(spec, 1, 2, seed=3))
    c = get_weights(build_model(spec, 1, 2, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    model = build_model(spec, 1, 2, seed=5)
    set_weights(model, a)
    assert all(np.array_equal(x, y) for x, y in zip(get_weights(model), a))
    with pytest.raises(ValueError, match="tensors"):
        set_weights(model, a[:-1])


def _weights(seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32),
            np.array(7, dtype=np.int64)]


@pytest.mark.parametrize("keep", ["all", "final", "none"])
def test_transcript_roundtrip(tmp_path, keep):
    t = Transcript(["a", "b", "c"], _weights(0))
    for r in (1, 2):
        view = RoundView(r)
        shared = _weights(10 + r)
        view.sent = {11: shared, 22: shared}
        view.config = {11: {"lr": 0.1}, 22: {"lr": 0.1}}
        view.replies = [Reply(11, 5, {"partition-id": 0}, _weights(100 + r)),
                        Reply(22, 7, {"partition-id": 1}, _weights(200 + r))]
        view.aggregate = _weights(300 + r)
        t.rounds.append(view)
    t.save(tmp_path / "t", keep=keep)
    back = Transcript.load(tmp_path / "t")
    assert [v.round for v in back.rounds] == [1, 2]
    assert np.array_equal(back.final[0], t.final[0])
    assert back.rounds[0].config[22] == {"lr": 0.1}
    assert back.rounds[1].reply_of(22).num_examples == 7
    assert back.rounds[1].reply_of(11).metrics == {"partition-id": 0}
    kept = {r: back.rounds[r - 1].reply_of(11).weights is not None for r in (1, 2)}
    assert kept == {"all": {1: True, 2: True}, "final": {1: False, 2: True}, "none": {1: False, 2: False}}[keep]
    if keep == "all":
        assert np.array_equal(back.rounds[0].reply_of(22).weights[1], t.rounds[0].reply_of(22).weights[1])
    # the model sent to both clients is stored once
    with np.load(tmp_path / "t" / "round-001.npz") as data:
        assert sum(k.startswith("sent-") for k in data.files) == 3
    assert np.array_equal(back.global_before(2)[0], t.rounds[0].aggregate[0])
    assert not list((tmp_path / "t").glob("*.tmp*"))


def test_a_streamed_round_leaves_memory_and_reads_back_from_its_file(tmp_path):
    t = Transcript(["a", "b", "c"], _weights(0))
    for r in (1, 2, 3):
        view = RoundView(r)
        view.sent = {11: _weights(10 + r), 22: _weights(20 + r)}
        view.replies = [Reply(11, 5, {}, _weights(100 + r)), Reply(22, 7, {}, _weights(200 + r))]
        view.aggregate = _weights(300 + r)
        t.rounds.append(view)
        t.save_round(tmp_path / "t", view)
        # no array of the round is held by the view any more
        assert "aggregate" not in view.__dict__ and "weights" not in view.replies[0].__dict__
        assert isinstance(view.sent, Mapping) and not isinstance(view.sent, dict)
    assert np.array_equal(t.rounds[0].reply_of(22).weights[0], _weights(201)[0])
    assert np.array_equal(t.rounds[1].sent[11][1], _weights(12)[1])
    assert np.array_equal(t.global_before(3)[0], _weights(302)[0])
    with pytest.raises(ValueError, match="read-only"):
        t.final[0][0, 0] = 1.0  # a consumer cannot corrupt what the next one reads
    t.save(tmp_path / "t", keep="final")  # pruning rewrites the earlier rounds without replies
    assert t.rounds[0].reply_of(11).weights is None and t.rounds[2].reply_of(11).weights is not None
    assert np.array_equal(t.rounds[0].aggregate[0], _weights(301)[0])
    back = Transcript.load(tmp_path / "t")
    assert np.array_equal(back.rounds[2].reply_of(11).weights[2], _weights(103)[2])
