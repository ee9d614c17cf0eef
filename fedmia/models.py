"""smp model factory and the weights ⇄ NumPy bridge used by Flower and the transcript."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from fedmia.registry import UnknownNameError

# smp's own name table; we accept its class names case-insensitively ("Unet", "FPN", ...).
ARCHITECTURES = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
# Architectures whose decoder takes one channel count per encoder stage.
_UNET_LIKE = {"unet", "unetplusplus", "manet"}


def check_architecture(arch: str) -> str:
    key = arch.lower()
    if key not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise UnknownNameError("model architecture", arch, ARCHITECTURES)
    return key


def check_encoder(encoder: str) -> str:
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        raise UnknownNameError("smp encoder", encoder, names)
    return encoder


def build_model(spec, in_channels: int, num_classes: int, seed: int | None = None) -> nn.Module:
    """Build an smp model with random weights (nothing is downloaded: encoder_weights=None).

    `spec` is a `fedmia.scenario.ModelSpec`. Encoder stages that a shallow `encoder_depth` never
    reaches are removed: they would otherwise carry most of the parameters (10.5M of 11.4M for a
    depth-3 resnet18), bloat every transcript and break Opacus, which needs every parameter used.
    """
    if seed is not None:
        torch.manual_seed(seed)
    arch = check_architecture(spec.arch)
    kwargs = {"encoder_depth": spec.encoder_depth}
    if arch in _UNET_LIKE:
        kwargs["decoder_channels"] = tuple(
            spec.decoder_channels or [max(16, 64 >> i) for i in range(spec.encoder_depth)]
        )
    model = smp.create_model(
        arch,
        encoder_name=check_encoder(spec.encoder),
        encoder_weights=None,
        in_channels=in_channels,
        classes=num_classes,
        **kwargs,
    )
    _drop_unused_encoder_modules(model, in_channels)
    return model


def uses_group_norm(scenario) -> bool:
    """Local DP-SGD needs per-sample gradients, which BatchNorm (mixing a batch) forbids; central
    DP clips whole updates, which BatchNorm's running statistics and step counters would swamp."""
    return scenario.model.norm == "group" or (scenario.model.norm == "auto" and scenario.defenses.dp is not None)


def scenario_model(scenario, info, seed: int | None = None) -> nn.Module:
    """The federation's model for `scenario`: every party (server, clients, attacks, evaluator)
    builds it here, so they agree on the architecture — GroupNorm included when DP needs it."""
    model = build_model(scenario.model, info.in_channels, info.num_classes, seed=seed)
    if uses_group_norm(scenario):
        from fedmia.defenses.dp import to_dp_compatible

        model = to_dp_compatible(model)
    return model


def _drop_unused_encoder_modules(model: nn.Module, in_channels: int) -> None:
    """Replace encoder sub-modules that take no part in the forward pass by nn.Identity."""
    with torch.enable_grad():  # callers may build models inside torch.no_grad()
        _probe_and_prune(model, in_channels)


def _probe_and_prune(model: nn.Module, in_channels: int) -> None:
    probe = torch.zeros(2, in_channels, 64, 64)
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    output = model(probe)
    if output.shape[-2:] != probe.shape[-2:]:
        raise ValueError(
            f"{type(model).__name__} with this encoder_depth maps 64x64 inputs to "
            f"{tuple(output.shape[-2:])} outputs; expected the input size (try encoder_depth 5)"
        )
    output.sum().backward()
    unused_names = {
        name
        for name, module in model.encoder.named_modules()
        if name
        and any(True for _ in module.parameters())
        and all(p.grad is None for p in module.parameters())
    }
    # Replace only the outermost unused modules (their children go with them).
    for name in sorted(unused_names, key=len):
        if any(name.startswith(outer + ".") for outer in unused_names if outer != name):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.encoder.get_submodule(parent_name) if parent_name else model.encoder
        setattr(parent, child, nn.Identity())
    model.zero_grad(set_to_none=True)
    # The probe pass updated BatchNorm running statistics: reset them so the seed alone decides.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
    model.train(was_training)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """All state (parameters and buffers) in state_dict order, as NumPy arrays of at least one
    dimension: SecAgg+ corrupts 0-d arrays (BatchNorm's `num_batches_tracked`)."""
    return [np.atleast_1d(value.detach().cpu().numpy()).copy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    current = model.state_dict()
    if len(current) != len(weights):
        raise ValueError(f"model has {len(current)} tensors, received {len(weights)}")
    with warnings.catch_warnings():
        # a streamed transcript's arrays are read-only; load_state_dict only reads them (copies)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        state = OrderedDict(
            (key, torch.as_tensor(np.asarray(w)).reshape(target.shape).to(target.dtype))
            for (key, target), w in zip(current.items(), weights)
        )
    model.load_state_dict(state, strict=True)


def weight_names(model: nn.Module) -> list[str]:
    return list(model.state_dict().keys())
