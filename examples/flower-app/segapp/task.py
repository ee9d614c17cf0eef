"""segapp: the network, the data and the local training (what `flwr new`'s PyTorch template puts
in task.py).

The network (run config `network`) is a small U-Net with GroupNorm (`unet`, the default) or a
U-Net on a ResNet-18 encoder from segmentation-models-pytorch (`resnet18-unet`); both give one
output logit per pixel (sigmoid: p(lesion)) and take RGB images in [0, 1] at a fixed size. Each hospital reads its own folder
(images/ and masks/, matched by file name) and keeps the records whose file name hashes to its
partition. Training: BCE + soft Dice, Adam.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU())


class Net(nn.Module):
    """RGB in, one logit out: (N, 3, H, W) -> (N, 1, H, W), H and W multiples of 4."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.down1, self.down2 = _block(3, width), _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), _block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.head(u1)


def ResNetUNet() -> nn.Module:
    """A U-Net on a ResNet-18 encoder three stages deep (segmentation-models-pytorch, BatchNorm),
    RGB in, one logit out. smp keeps the encoder stages a depth-3 decoder never reads; they are
    replaced by Identity, so every message carries only weights that train."""
    import segmentation_models_pytorch as smp

    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(64, 32, 16),
                   in_channels=3, classes=1)
    net.encoder.layer3, net.encoder.layer4 = nn.Identity(), nn.Identity()
    return net


NETWORKS = {"unet": Net, "resnet18-unet": ResNetUNet}


def network(name: str = "unet") -> nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"network {name!r}: expected one of {', '.join(NETWORKS)}")
    return NETWORKS[name]()


def data_folder(configured: str = "") -> Path:
    return Path(configured or os.environ.get("SEGAPP_DATA", "data"))


def partition_of(name: str, num_partitions: int) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % num_partitions


def read_folder(folder: Path, size: int, partition_id: int | None = None, num_partitions: int = 1):
    """(images (N, 3, size, size) in [0, 1], masks (N, 1, size, size) in {0, 1}, names)."""
    names = sorted(p.name for p in (folder / "images").iterdir() if not p.name.startswith("."))
    if partition_id is not None:
        names = [n for n in names if partition_of(n, num_partitions) == partition_id]
    images, masks = [], []
    for name in names:
        stem = Path(name).stem
        mask_file = next((folder / "masks").glob(f"{stem}.*"))
        image = Image.open(folder / "images" / name).convert("RGB").resize((size, size), Image.BILINEAR)
        mask = Image.open(mask_file).convert("L").resize((size, size), Image.NEAREST)
        images.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        masks.append((np.asarray(mask) > 127).astype(np.float32)[None])
    return torch.as_tensor(np.stack(images)), torch.as_tensor(np.stack(masks)), names


def load_data(partition_id: int, num_partitions: int, data_path: str = "", size: int = 64,
              batch_size: int = 8) -> DataLoader:
    images, masks, _ = read_folder(data_folder(data_path), size, partition_id, num_partitions)
    return DataLoader(TensorDataset(images, masks), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(partition_id))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for images, masks in loader:
            optimizer.zero_grad()
            logits = net(images)
            loss = F.binary_cross_entropy_with_logits(logits, masks) + soft_dice_loss(logits, masks)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss), batches + 1
    return total / max(batches, 1)


@torch.no_grad()
def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """(mean BCE, pooled Dice) on `loader`."""
    net.eval()
    loss, inter, total, n = 0.0, 0.0, 0.0, 0
    for images, masks in loader:
        logits = net(images)
        loss += float(F.binary_cross_entropy_with_logits(logits, masks)) * len(images)
        pred = (logits > 0).float()
        inter, total, n = inter + float((pred * masks).sum()), total + float(pred.sum() + masks.sum()), n + len(images)
    return loss / max(n, 1), (2 * inter / total if total else 1.0)
