"""What sits between fedmia and a network as its authors built it: the input normalisation it
was trained with, and a one-logit (sigmoid) head read as two classes.

Both are module hooks, not wrapper modules: the network's state dict — names and shapes — stays
exactly the one its checkpoint holds, so a model trained elsewhere loads as it is, and every
caller of the model (local training, DP-SGD's per-sample gradients, the attacks' query API, the
evaluator) sees the same adapted model. Classes at module level: Ray and cloudpickle ship them.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's, on [0, 1] RGB


class Normalize:
    """Forward pre-hook: (x − mean) / std per channel, on images that arrive in [0, 1]."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"model.normalize has {self.mean.shape[1]} channel(s), the images {x.shape[1]}")
        return ((x - self.mean.to(x)) / self.std.to(x), *args[1:])


class SigmoidAsTwoClasses:
    """Forward hook: one logit channel z becomes the logits [0, z] of (background, foreground).
    softmax([0, z]) = [1 − σ(z), σ(z)] exactly, and cross-entropy on them is BCE on z, so every
    attack and loss that reads class logits reads a sigmoid head correctly."""

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(output), output], dim=1)


def adapt(model: nn.Module, spec) -> nn.Module:
    """Attach the hooks `spec` (a ModelSpec) asks for; the model is returned for chaining."""
    if spec.normalize is not None:
        mean, std = IMAGENET if spec.normalize == "imagenet" else (spec.normalize.mean, spec.normalize.std)
        if len(mean) != len(std):
            raise ValueError(f"model.normalize: {len(mean)} means but {len(std)} stds; expected one of each per "
                             "input channel")
        model.register_forward_pre_hook(Normalize(mean, std))
    if spec.head == "sigmoid":
        model.register_forward_hook(SigmoidAsTwoClasses())
    return model
