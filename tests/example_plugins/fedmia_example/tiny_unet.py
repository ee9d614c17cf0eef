"""Example plug-in: a model family that is not smp — a two-level U-Net in plain PyTorch.

One file and one entry-point line (`example-tiny-unet = "fedmia_example.tiny_unet"` under
`[project.entry-points."fedmia.models"]`); a scenario picks it with
`model: {family: example-tiny-unet, options: {width: 8}}`. Conv2d, BatchNorm and ReLU only,
upsampling without parameters: local DP-SGD converts the BatchNorm to GroupNorm and its
book-keeping engine covers every layer.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedmia.models import ModelFamily, register_model_family


class TinyUNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(8, ge=1, description="channels of the first level (doubled at the second)")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyUNet(nn.Module):
    """(N, C, H, W) → (N, K, H, W) logits; H and W even."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 8):
        super().__init__()
        self.down = _block(in_channels, width)
        self.pool = nn.MaxPool2d(2)
        self.bottom = _block(width, 2 * width)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge = _block(3 * width, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        skip = self.down(x)
        deep = self.up(self.bottom(self.pool(skip)))
        return self.head(self.merge(torch.cat([skip, deep], dim=1)))


@register_model_family("example-tiny-unet")
class TinyUNetFamily(ModelFamily):
    """A two-level plain-PyTorch U-Net (`model.options.width`)."""

    Params = TinyUNetOptions

    def build(self, spec, in_channels, num_classes, options):
        return TinyUNet(in_channels, num_classes, options.width)
