"""Local training, inference and segmentation utility — plain PyTorch, no Flower here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as F

from fedmia.data.records import Records


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class TrainRecipe:
    """How a client trains locally; the server may send (some of) these in its fit config."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0

    @classmethod
    def from_scenario(cls, scenario) -> "TrainRecipe":
        fed = scenario.federation
        smoothing = scenario.defenses.label_smoothing
        return cls(fed.local_epochs, fed.batch_size, fed.lr, fed.optimizer, fed.momentum, fed.weight_decay,
                   smoothing.epsilon if smoothing is not None else 0.0)


def make_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def minibatches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch's shuffled index batches; a trailing batch of one is skipped (it breaks
    BatchNorm in training mode) unless it is all there is."""
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        batch = order[start : start + batch_size]
        if len(batch) < 2 and count > 1:
            continue
        yield batch


def train_local(
    model: nn.Module, records: Records, recipe: TrainRecipe, *, seed: int, device: torch.device
) -> dict[str, float]:
    """Plain minibatch training with per-pixel cross-entropy (the adversary's reference models,
    replays and rehearsals; a client's own training is `fedmia.local.LocalRun`, which reduces to
    this when no defense is active). Returns the mean loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = torch.as_tensor(records.images)
    masks = torch.as_tensor(records.masks)
    model.to(device).train()
    optimizer = make_optimizer(model, recipe)
    last_epoch_loss = float("nan")
    for _ in range(recipe.epochs):
        total, seen = 0.0, 0
        for batch in minibatches(len(records), recipe.batch_size, generator):
            x, y = images[batch].to(device), masks[batch].to(device).long()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        last_epoch_loss = total / max(seen, 1)
    return {"train-loss": last_epoch_loss}


def inference_batch(images: np.ndarray, batch_size: int | None = None) -> int:
    """Records per inference batch: `batch_size` if given, else 64 up to 64×64 pixels and fewer
    as images grow (4 at 256×256), so a forward pass's activations — the peak memory of scoring
    and evaluation — stay about the same whatever the image size (64 at 256×256 with a ResNet-34
    Unet held several GB)."""
    if batch_size is not None:
        return batch_size
    pixels = int(np.prod(images.shape[-2:])) if getattr(images, "ndim", 0) >= 2 else 1
    return max(1, min(64, (64 * 64 * 64) // max(pixels, 1)))


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, *, device: torch.device,
                   batch_size: int | None = None) -> torch.Tensor:
    """Logits (N, C, H, W) on the CPU, the model in eval mode (what a deployed model returns)."""
    model.to(device).eval()
    batch_size = inference_batch(images, batch_size)
    outputs = []
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(images[start : start + batch_size]).to(device)
        outputs.append(model(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def segmentation_utility(logits: torch.Tensor, masks: np.ndarray, num_classes: int) -> dict[str, float]:
    """Dice and IoU from smp's confusion statistics, pooled over all pixels of the set.

    Dice: macro mean over the *foreground* classes present in the ground truth (background would
    inflate it). mIoU: macro mean over all classes present, background included, as usual.
    """
    target = torch.as_tensor(masks).long()
    pred = logits.argmax(1)
    tp, fp, fn, tn = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=num_classes)
    tp, fp, fn, tn = (s.sum(0, keepdim=True) for s in (tp, fp, fn, tn))
    dice = smp.metrics.f1_score(tp, fp, fn, tn, reduction="none")[0]
    iou = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none")[0]
    present = (tp + fn)[0] > 0
    foreground = present.clone()
    foreground[0] = False
    return {
        "dice": float(dice[foreground].mean()) if foreground.any() else float("nan"),
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
    }


def evaluate_utility(model: nn.Module, records: Records, num_classes: int, device: torch.device) -> dict[str, float]:
    logits = predict_logits(model, records.images, device=device)
    loss = float(F.cross_entropy(logits, torch.as_tensor(records.masks).long()))
    return {"loss": loss, **segmentation_utility(logits, records.masks, num_classes)}
