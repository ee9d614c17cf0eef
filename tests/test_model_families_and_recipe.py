"""Issue 25, parts 2 and 3: the model (families, pretrained encoders, a checkpoint to start from)
and the training recipe (loss, learning-rate schedule, augmentation), each with and without
DP-SGD. Real smp models, real Opacus, real Flower for the one federation."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from conftest import TINY
from fedmia.data.records import Records
from fedmia.models import build_model, get_weights, read_checkpoint, scenario_model
from fedmia.scenario import ModelSpec, ScenarioError
from fedmia.training import (LOSSES, TrainRecipe, augment_batch, batch_loss, lr_factor, record_losses,
                             train_local)
from fedmia.validation import load_scenario

CPU = torch.device("cpu")


def _records(n=8, size=16, channels=1, seed=0) -> Records:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        t, l = rng.integers(0, size // 2, 2)
        masks[i, t : t + size // 2, l : l + size // 2] = 1
    images = (masks[:, None].astype(np.float32) * 0.6 + rng.random((n, channels, size, size), dtype=np.float32) * 0.4)
    return Records(images=images, masks=masks, ids=np.array([f"r:{i}" for i in range(n)], dtype=object))


# ---------------------------------------------------------------- part 2: pretrained encoders
def test_pretrained_encoder_offline_is_one_clear_problem(write_scenario, monkeypatch, tmp_path):
    """No network and nothing cached: one ValueError naming the weights, the Hugging Face repo
    and how to provide them — `fedmia validate` reports it under `model`. Hugging Face's own
    offline mode (what HF_HUB_OFFLINE=1 sets) makes the failed download immediate instead of
    ~25 s of retries against an unreachable host."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError) as error:
        build_model(ModelSpec(encoder_weights="imagenet"), 3, 2)
    message = str(error.value)
    assert "\n" not in message and "imagenet" in message and "resnet18" in message
    assert "smp-hub/resnet18.imagenet" in message and "HF_HOME" in message and "model.init" in message
    with pytest.raises(ScenarioError) as problems:
        load_scenario(write_scenario({"model": {"encoder_weights": "imagenet"}}))
    assert any(where == "model" and "imagenet" in what for where, what in problems.value.problems)
    with pytest.raises(ScenarioError, match="no pretrained weights 'imagenett'"):
        load_scenario(write_scenario({"model": {"encoder_weights": "imagenett"}}))


# ---------------------------------------------------------------- part 2: model.init
def _trained_checkpoint(spec, path, in_channels=1, num_classes=2):
    """A model of `spec` whose weights differ from any seeded initialisation (a 'pretrained' one)."""
    model = build_model(spec, in_channels, num_classes, seed=123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_init_checkpoint_is_the_first_broadcast(write_scenario, tmp_path):
    """A state-dict file as model.init: the strategy's initial weights — the transcript's initial
    model, the first broadcast — are the checkpoint's tensors, and every party's model starts there."""
    from fedmia.data.plan import build_plan
    from fedmia.server_app import make_strategy

    saved = _trained_checkpoint(ModelSpec(**TINY["model"]), tmp_path / "start.pt")
    scenario = load_scenario(write_scenario({"model": {"init": str(tmp_path / "start.pt")}}))
    strategy = make_strategy(scenario)
    assert strategy.transcript.weight_names == list(saved)
    for name, initial in zip(strategy.transcript.weight_names, strategy.transcript.initial):
        np.testing.assert_array_equal(initial, np.atleast_1d(saved[name].numpy()))
    other = scenario_model(scenario, build_plan(scenario).info, seed=99)  # a client's, an attack's model
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(other), strategy.transcript.initial))


def test_init_from_a_full_model_a_save_pretrained_folder_and_under_dp(tmp_path):
    """A checkpoint of the unpruned smp model (what smp's own training saves) loads: the tensors
    of encoder stages a shallow depth never reaches are not expected. So does a save_pretrained
    folder; and under local DP a BatchNorm checkpoint is loaded before the GroupNorm conversion
    (its weights kept), a GroupNorm one (saved from a DP model) after it."""
    from types import SimpleNamespace

    from fedmia.scenario import Defenses

    from fedmia.defenses import DEFENSES

    full = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, encoder_depth=2, decoder_channels=(32, 16),
                            in_channels=1, classes=2)
    assert hasattr(full.encoder, "layer4")
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.01)
    full.save_pretrained(tmp_path / "pretrained")
    torch.save(full.state_dict(), tmp_path / "full.pt")
    info = SimpleNamespace(in_channels=1, num_classes=2)
    for source in (tmp_path / "full.pt", tmp_path / "pretrained"):
        scenario = SimpleNamespace(model=ModelSpec(encoder_depth=2, init=str(source)),
                                   defenses=Defenses({}))
        model = scenario_model(scenario, info, seed=0)
        state = model.state_dict()
        assert "encoder.layer4.0.conv1.weight" not in state  # still pruned
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, full.state_dict()[name].to(tensor.dtype), rtol=0, atol=0)
    dp = DEFENSES.get("dp")(DEFENSES.get("dp").Params(mode="local", noise_multiplier=1.0))
    under_dp = SimpleNamespace(model=ModelSpec(encoder_depth=2, init=str(tmp_path / "full.pt")),
                               defenses=Defenses({"dp": dp.params}))
    gn = scenario_model(under_dp, info, seed=0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    torch.testing.assert_close(gn.state_dict()["encoder.conv1.weight"], full.state_dict()["encoder.conv1.weight"])
    torch.save(gn.state_dict(), tmp_path / "gn.pt")
    again = scenario_model(SimpleNamespace(model=ModelSpec(encoder_depth=2, init=str(tmp_path / "gn.pt")),
                                           defenses=Defenses({"dp": dp.params})), info, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(again), get_weights(gn)))


def test_init_that_does_not_fit_is_named_at_validation(write_scenario, tmp_path):
    """Validation names the first mismatching tensor (name, expected shape, found shape), missing
    or unexpected tensors, and files that are no state dict; input channels and classes are the
    data's, so the probe leaves them free and the run's model checks them exactly."""
    _trained_checkpoint(ModelSpec(encoder_depth=2, decoder_channels=[16, 8]), tmp_path / "narrow.pt")
    with pytest.raises(ScenarioError) as error:
        load_scenario(write_scenario({"model": {"init": str(tmp_path / "narrow.pt")}}))
    (where, what), = [p for p in error.value.problems if p[0] == "model"]
    assert "narrow.pt" in what and "tensor decoder.blocks" in what and "expected shape (32," in what
    assert "found (16," in what
    assert "decoder_channels [256, 128, 64, 32, 16]" in what  # the hint: smp's own widths, a plain smp.Unet

    state = read_checkpoint(str(_write(tmp_path / "x.pt", TINY)))  # the helper writes a real state dict
    state.pop("segmentation_head.0.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(ScenarioError, match=r"1 missing tensor\(s\): segmentation_head.0.bias"):
        load_scenario(write_scenario({"model": {"init": str(tmp_path / "keys.pt")}}))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ScenarioError, match="junk.pt cannot be read as a state dict"):
        load_scenario(write_scenario({"model": {"init": str(tmp_path / "junk.pt")}}))
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(write_scenario({"model": {"init": str(tmp_path / "nowhere.pt")}}))

    # three input channels: not the probe's one, so validation passes; the data's (one) refuses it
    from fedmia.data.plan import build_plan

    _trained_checkpoint(ModelSpec(**TINY["model"]), tmp_path / "rgb.pt", in_channels=3)
    scenario = load_scenario(write_scenario({"model": {"init": str(tmp_path / "rgb.pt")}}))
    with pytest.raises(ValueError, match=r"tensor encoder.conv1.weight: expected shape \(64, 1, 7, 7\), "
                                         r"found \(64, 3, 7, 7\)"):
        scenario_model(scenario, build_plan(scenario).info)


def _write(path, raw):
    spec = ModelSpec(**raw["model"])
    torch.save(build_model(spec, 1, 2, seed=0).state_dict(), path)
    return path


# ---------------------------------------------------------------- part 3: model families
TINY_UNET = {"model": {"family": "example-tiny-unet", "options": {"width": 4}}, "attacks": ["loss"]}


def test_a_plug_in_family_is_refused_by_what_cannot_handle_it(example_plugins, write_scenario):
    from fedmia.models import MODEL_FAMILIES

    assert MODEL_FAMILIES.package("example-tiny-unet") == ("fedmia-example-plugins", "0.3.0")
    load_scenario(write_scenario(TINY_UNET))
    with pytest.raises(ScenarioError) as refused:
        load_scenario(write_scenario({**TINY_UNET, "server": {"strategy": "trap-weights"}}))
    (where, what), = refused.value.problems
    assert where == "model.family" and "trap-weights" in what and "TinyUNet has no `encoder`" in what
    # the other parts that assume smp's module names refuse it too, each naming what it lacks
    for change, key, message in (({"server": {"strategy": "isolation"}}, "model.family", "no `decoder`"),
                                 ({"server": {"strategy": "poisoning"}}, "server.reset", "no weight of the model"),
                                 ({"defenses": {"laplace": {}}}, "defenses.laplace", "segmentation_head")):
        with pytest.raises(ScenarioError) as refused:
            load_scenario(write_scenario({**TINY_UNET, **change}))
        (where, what), = refused.value.problems
        assert where == key and message in what, (where, what)
    # config-isolation changes no weight, and poisoning with the model's own prefixes is fine
    load_scenario(write_scenario({**TINY_UNET, "server": {"strategy": "config-isolation"}}))
    load_scenario(write_scenario({**TINY_UNET, "server": {"strategy": "poisoning", "reset": ["merge"]}}))
    with pytest.raises(ScenarioError, match=r"model\.options\.widht: Extra inputs are not permitted"):
        load_scenario(write_scenario({"model": {"family": "example-tiny-unet", "options": {"widht": 4}}}))


# slow: the family's build and its refusals are checked without Ray above
@pytest.mark.slow
def test_a_plug_in_family_trains_in_a_real_run(example_plugins, write_scenario, tmp_path, stops_its_processes):
    from fedmia.runner import run_scenario
    from fedmia.transcript import Transcript

    scenario = load_scenario(write_scenario(TINY_UNET))
    metrics = run_scenario(scenario, tmp_path / "run").as_json()
    assert 0 <= metrics["utility"]["dice"] <= 1 and 0 <= metrics["attacks"]["loss"]["auc"] <= 1
    transcript = Transcript.load(tmp_path / "run" / "transcript")
    assert transcript.weight_names[0].startswith("down.0") and len(transcript.rounds[0].replies) == 2


def test_module_family_builds_any_factory_and_names_what_is_wrong(example_plugins, write_scenario):
    net = {"family": "module", "factory": "fedmia_example.tiny_unet:TinyUNet", "options": {"width": 4}}
    scenario = load_scenario(write_scenario({"model": net}))
    model = build_model(scenario.model, 3, 4, seed=0)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4, 16, 16)
    for change, message in (({"factory": "fedmia_example.nowhere:Net"}, "failed to import"),
                            ({"factory": "fedmia_example.tiny_unet:Nothing"}, "has no 'Nothing'"),
                            ({"factory": "torch.nn:Identity"}, r"expected logits of shape \(2, 2, 64, 64\)"),
                            ({"family": "no-such-family"}, "unknown model family 'no-such-family'")):
        with pytest.raises(ScenarioError, match=message):
            load_scenario(write_scenario({"model": {**net, **change}}))


# ---------------------------------------------------------------- part 4: losses
@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_per_record_mean_is_the_batch_loss(loss):
    torch.manual_seed(0)
    logits, y = torch.randn(5, 3, 8, 8), torch.randint(0, 3, (5, 8, 8))
    y[2] = 0  # a record with only background: absent classes count 0 in Dice, as in smp
    for smoothing in (0.0, 0.1):
        recipe = TrainRecipe(1, 5, 0.1, label_smoothing=smoothing, loss=loss)
        per_record = record_losses(logits, y, recipe)
        assert per_record.shape == (5,)
        torch.testing.assert_close(per_record.mean(), batch_loss(logits, y, recipe))
    plain = TrainRecipe(1, 5, 0.1, loss=loss)
    if loss == "focal":  # smp's FocalLoss over the batch
        torch.testing.assert_close(batch_loss(logits, y, plain), smp.losses.FocalLoss("multiclass")(logits, y))
    if loss in ("dice", "dice+ce"):  # smp's DiceLoss of each record on its own
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none").flatten(1).mean(1) \
            if loss == "dice+ce" else torch.zeros(5)
        for i in range(5):
            torch.testing.assert_close(record_losses(logits[i : i + 1], y[i : i + 1], plain)[0] - ce[i],
                                       smp.losses.DiceLoss("multiclass")(logits[i : i + 1], y[i : i + 1]))


@pytest.mark.parametrize("loss", ["dice", "focal"])
def test_bookkeeping_clipping_is_exact_for_the_per_record_losses(loss):
    """The per-record Dice/focal losses couple a record's pixels only, so the book-keeping
    clipped sum equals the clipped per-record autograd gradients."""
    from fedmia.defenses import clipping
    from fedmia.defenses.dp import to_dp_compatible

    model = to_dp_compatible(build_model(ModelSpec(encoder_depth=2), 1, 2, seed=0))
    records = _records(4)
    x, y = torch.as_tensor(records.images), torch.as_tensor(records.masks).long()
    recipe = TrainRecipe(1, 4, 0.1, loss=loss, label_smoothing=0.1)
    sums, losses, _ = clipping.clipped_gradient_sum(model, x, lambda out: record_losses(out, y, recipe), 0.05)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(4):
        model.zero_grad()
        record_losses(model(x[i : i + 1]), y[i : i + 1], recipe).sum().backward()
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        factor = min(1.0, 0.05 / (torch.sqrt(sum(v.pow(2).sum() for v in g.values())) + 1e-6))
        for n in expected:
            expected[n] += factor * g[n]
    for n in expected:
        torch.testing.assert_close(sums[n], expected[n], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- part 4: schedule, augmentation
def test_schedule_factors_and_round_decay(write_scenario):
    from fedmia.local import client_recipe

    cosine = TrainRecipe(2, 4, 1.0, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(cosine, 0, 0, 3) == 1.0 and lr_factor(cosine, 1, 2, 3) == pytest.approx(0.1)
    assert lr_factor(TrainRecipe(4, 4, 1.0, schedule="step", step_epochs=2, gamma=0.5), 3, 0, 3) == 0.5
    assert lr_factor(TrainRecipe(4, 4, 1.0), 3, 2, 3) == 1.0
    scenario = load_scenario(write_scenario({"federation": {
        "lr": 0.01, "loss": "dice+ce", "lr_schedule": {"kind": "cosine", "round_decay": 0.9},
        "augment": {"flips": True, "rot90": True, "intensity": 0.1}}}))
    assert client_recipe(scenario, {"server-round": 1, "lr": 0.01}).lr == pytest.approx(0.01)
    assert client_recipe(scenario, {"server-round": 3, "lr": 0.01}).lr == pytest.approx(0.01 * 0.81)
    pinned = scenario.model_copy(update={"federation": scenario.federation.model_copy(
        update={"pin_hyperparameters": True})})
    assert client_recipe(pinned, {"server-round": 2, "lr": 5.0}).lr == pytest.approx(0.009)
    # reference and shadow models train with the victim's recipe: it carries all of it
    recipe = TrainRecipe.from_scenario(scenario)
    assert (recipe.loss, recipe.schedule, recipe.flips, recipe.rot90, recipe.intensity) == \
        ("dice+ce", "cosine", True, True, 0.1)


def test_augmentation_is_per_record_seeded_and_moves_masks_with_images():
    records = _records(6)
    x, y = torch.as_tensor(records.masks).float().unsqueeze(1), torch.as_tensor(records.masks).long()
    geometric = TrainRecipe(1, 6, 0.1, flips=True, rot90=True)
    ax, ay = augment_batch(x, y, geometric, np.random.default_rng(3))
    torch.testing.assert_close(ax[:, 0], ay.float())  # the mask underwent the image's transform
    bx, _ = augment_batch(x, y, geometric, np.random.default_rng(3))
    assert torch.equal(ax, bx) and not torch.equal(ax, x)
    ix, iy = augment_batch(x, y, TrainRecipe(1, 6, 0.1, intensity=0.2), np.random.default_rng(0))
    assert torch.equal(iy, y) and not torch.allclose(ix, x)
    assert augment_batch(x, y, TrainRecipe(1, 6, 0.1), np.random.default_rng(0))[0] is x


# each new loss plain and under each DP-SGD engine (cross-entropy under both is tests/test_dp_clipping.py's);
# 6 cases rather than all 12: each costs a validation, a plan and two trainings (~10-20 s on 2 busy cores)
@pytest.mark.parametrize("loss, dp_engine", [("dice+ce", None), ("focal", None), ("dice", "bookkeeping"),
                                             ("focal", "bookkeeping"), ("dice+ce", "torch.func"),
                                             ("focal", "torch.func")])
def test_each_loss_with_schedule_and_augmentation_trains_with_and_without_dp(loss, dp_engine, write_scenario):
    """A client's local training (fedmia.local) with the whole recipe, plain and under each
    DP-SGD engine, crop included under DP: it runs, the loss is finite, the model moves, and the
    same seed gives the same model."""
    from fedmia.data.plan import build_plan
    from fedmia.local import client_recipe, local_training

    changes = {"federation": {"loss": loss, "local_epochs": 2, "lr_schedule": {"kind": "cosine", "round_decay": 0.9},
                              "augment": {"flips": True, "rot90": True, "intensity": 0.1}}}
    if dp_engine is not None:
        changes["defenses"] = {"dp": {"mode": "local", "noise_multiplier": 0.5, "engine": dp_engine,
                                      "audit_canaries": 0}, "crop": {"size": 8}}
    scenario = load_scenario(write_scenario(changes))
    plan = build_plan(scenario)
    results = []
    for _ in range(2):
        model = scenario_model(scenario, plan.info, seed=0)
        before = get_weights(model)
        stats = local_training(scenario, model, plan.clients[0], client_recipe(scenario, {"server-round": 2}),
                               seed=1, device=CPU)
        assert np.isfinite(stats["train-loss"]) and stats["train-loss"] > 0
        after = get_weights(model)
        assert any(not np.array_equal(a, b) for a, b in zip(before, after))
        results.append(after)
    assert all(np.array_equal(a, b) for a, b in zip(*results))


def test_reference_models_train_with_the_recipe():
    """train_local (reference, shadow and replayed models) uses the recipe's loss and augmentation:
    two recipes differing only there give different models from the same seed."""
    records = _records(8)
    models = []
    for recipe in (TrainRecipe(1, 4, 0.01), TrainRecipe(1, 4, 0.01, loss="dice"),
                   TrainRecipe(1, 4, 0.01, flips=True), TrainRecipe(1, 4, 0.01, schedule="cosine")):
        model = build_model(ModelSpec(encoder_depth=2), 1, 2, seed=0)
        train_local(model, records, recipe, seed=0, device=CPU)
        models.append(get_weights(model))
    for other in models[1:]:
        assert any(not np.array_equal(a, b) for a, b in zip(models[0], other))


def test_validate_refuses_a_checkpoint_whose_head_the_scenario_misdescribes(write_scenario, tmp_path):
    """`validate` said ok to a one-logit checkpoint under a two-class head, and the run failed
    later: the checkpoint is now built against the data's channels and classes at validation."""
    from typer.testing import CliRunner

    from fedmia.cli import app

    one_logit = build_model(ModelSpec(encoder_depth=2, head="sigmoid"), in_channels=1, num_classes=2, seed=0)
    torch.save(one_logit.state_dict(), tmp_path / "sigmoid.pt")
    wrong = write_scenario({"model": {"init": str(tmp_path / "sigmoid.pt")}})
    result = CliRunner().invoke(app, ["validate", str(wrong)])
    assert result.exit_code == 2 and "set model.head: sigmoid" in " ".join(result.stderr.split()), result.output
    right = write_scenario({"model": {"init": str(tmp_path / "sigmoid.pt"), "head": "sigmoid"}}, name="right.yaml")
    assert CliRunner().invoke(app, ["validate", str(right)]).exit_code == 0
