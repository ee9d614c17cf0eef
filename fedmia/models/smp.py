"""The `smp` model family (the default): any segmentation-models-pytorch architecture and encoder.

Encoder stages that a shallow `encoder_depth` never reaches are removed: they would otherwise
carry most of the parameters (10.5M of 11.4M for a depth-3 resnet18), bloat every transcript and
break Opacus, which needs every parameter used. Pretrained encoder weights (`encoder_weights`)
load before that pruning, so a full pretrained encoder fits; offline, a download that cannot
happen is one ValueError naming the weights and how to provide them locally.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from fedmia.models.family import ModelFamily, register_model_family
from fedmia.registry import UnknownNameError

# smp's own name table; we accept its class names case-insensitively ("Unet", "FPN", ...).
ARCHITECTURES = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
# Architectures whose decoder takes one channel count per encoder stage, and smp's default counts
# (smp.Unet's decoder_channels for its default encoder_depth 5).
_UNET_LIKE = {"unet", "unetplusplus", "manet"}
SMP_DECODER = (256, 128, 64, 32, 16)


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


def check_encoder_weights(encoder: str, weights: str | None) -> None:
    if weights is None or encoder.startswith("tu-"):
        return
    known = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    if weights not in known:
        raise ValueError(f"model.encoder_weights: encoder {encoder} has no pretrained weights {weights!r}; "
                         f"expected one of: {', '.join(known) or '(none)'}, or null")


def _weights_source(encoder: str, weights: str) -> str:
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get(weights, {})
    return settings.get("repo_id", f"the {encoder} {weights} weights")


@register_model_family("smp")
class SmpFamily(ModelFamily):
    """segmentation-models-pytorch: `model.arch` with `model.encoder` (optionally pretrained:
    `model.encoder_weights`), `encoder_depth` stages, pruned to the stages it uses."""

    def build(self, spec, in_channels: int, num_classes: int, options) -> nn.Module:
        if spec.factory is not None:
            raise ValueError("model.factory: only family module takes a factory; expected family: module, "
                             f"or no factory with family smp (found {spec.factory!r})")
        if spec.options:
            raise ValueError(f"model.options: family smp takes none, found {sorted(spec.options)}")
        arch = check_architecture(spec.arch)
        encoder = check_encoder(spec.encoder)
        check_encoder_weights(encoder, spec.encoder_weights)
        kwargs = {"encoder_depth": spec.encoder_depth}
        if arch in _UNET_LIKE:  # smp's own defaults; a shallower encoder takes their last stages
            kwargs["decoder_channels"] = tuple(spec.decoder_channels or SMP_DECODER[len(SMP_DECODER) - spec.encoder_depth:])
        try:
            model = smp.create_model(arch, encoder_name=encoder, encoder_weights=spec.encoder_weights,
                                     in_channels=in_channels, classes=num_classes, **kwargs)
        except (OSError, RuntimeError) as error:  # huggingface_hub: no network, no cached file
            if spec.encoder_weights is None:
                raise
            source = _weights_source(encoder, spec.encoder_weights)
            raise ValueError(
                f"model.encoder_weights: cannot get the {spec.encoder_weights} weights of encoder {encoder} "
                f"(Hugging Face repo {source}; {type(error).__name__}); expected them in the Hugging Face cache: "
                f"on a machine online run `huggingface-cli download {source}` and copy the cache "
                f"(HF_HOME, default ~/.cache/huggingface) here, or start from a local checkpoint with model.init"
            ) from None
        _drop_unused_encoder_modules(model, in_channels)
        return model


def _drop_unused_encoder_modules(model: nn.Module, in_channels: int) -> None:
    """Replace encoder sub-modules that take no part in the forward pass by nn.Identity; their
    names are kept in `model.pruned_modules` (a checkpoint of the full model then still loads)."""
    with torch.enable_grad():  # callers may build models inside torch.no_grad()
        _probe_and_prune(model, in_channels)


def _probe_and_prune(model: nn.Module, in_channels: int) -> None:
    probe = torch.zeros(2, in_channels, 64, 64)
    # The probe pass updates BatchNorm running statistics: they are put back afterwards, so the
    # seed (or the pretrained encoder) alone decides them.
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
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
    pruned = []
    # Replace only the outermost unused modules (their children go with them).
    for name in sorted(unused_names, key=len):
        if any(name.startswith(outer + ".") for outer in unused_names if outer != name):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.encoder.get_submodule(parent_name) if parent_name else model.encoder
        setattr(parent, child, nn.Identity())
        pruned.append(f"encoder.{name}")
    model.pruned_modules = pruned
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    model.train(was_training)
