"""Local training, inference and segmentation utility — plain PyTorch, no Flower here."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as F

from fedmia.data.records import Records


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


LOSSES = ("ce", "dice", "dice+ce", "focal")


@dataclass(frozen=True)
class TrainRecipe:
    """How a client trains locally; the server may send (some of) these in its fit config.
    Reference, shadow and replayed models train with the same recipe (`from_scenario`): loss,
    schedule and augmentation included, or their losses would not be the victim's."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    loss: str = "ce"
    schedule: str = "constant"  # within one local run: constant | cosine | step
    step_epochs: int = 1
    gamma: float = 0.5
    min_lr_ratio: float = 0.0
    flips: bool = False
    rot90: bool = False
    intensity: float = 0.0

    @classmethod
    def from_scenario(cls, scenario) -> "TrainRecipe":
        """The federation's recipe as its block states it; defenses acting on the local loss
        adjust it through their `recipe` hook (`fedmia.defenses.defended_recipe`)."""
        fed = scenario.federation
        schedule, augment = fed.lr_schedule, fed.augment
        return cls(fed.local_epochs, fed.batch_size, fed.lr, fed.optimizer, fed.momentum, fed.weight_decay,
                   0.0, loss=fed.loss, schedule=schedule.kind,
                   step_epochs=schedule.step_epochs, gamma=schedule.gamma, min_lr_ratio=schedule.min_lr_ratio,
                   flips=augment.flips, rot90=augment.rot90, intensity=augment.intensity)

    @property
    def augments(self) -> bool:
        return self.flips or self.rot90 or self.intensity > 0


# ---- losses: one value per record, so DP-SGD can clip each record's gradient ----------------
def _soft_targets(y: torch.Tensor, num_classes: int, smoothing: float, dtype) -> torch.Tensor:
    """(B, K, H, W) one-hot targets, smoothed as cross-entropy's label_smoothing smooths them:
    (1 − ε)·onehot + ε/K. A comparison, not F.one_hot: it runs under torch.func's vmap."""
    classes = torch.arange(num_classes, device=y.device).view(1, num_classes, *([1] * (y.dim() - 1)))
    onehot = (y.unsqueeze(1) == classes).to(dtype)
    return onehot * (1 - smoothing) + smoothing / num_classes if smoothing else onehot


def _dice_per_record(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """smp's multiclass DiceLoss (from logits, smooth 0, eps 1e-7) of each record on its own:
    1 − soft Dice per class, classes absent from the record's mask count 0, mean over classes.
    smp's batch DiceLoss pools the whole batch into one Dice, which ties every record's gradient
    to the others' — no per-record clipping is possible — so fedmia's Dice loss is per image."""
    from segmentation_models_pytorch.losses._functional import soft_dice_score

    b, k = logits.shape[:2]
    probs = logits.log_softmax(dim=1).exp().reshape(b, k, -1)
    hard = _soft_targets(y, k, 0.0, probs.dtype).reshape(b, k, -1)
    target = _soft_targets(y, k, smoothing, probs.dtype).reshape(b, k, -1) if smoothing else hard
    score = soft_dice_score(probs, target, smooth=0.0, eps=1e-7, dims=(2,))
    return ((1.0 - score) * (hard.sum(2) > 0).to(score.dtype)).mean(1)


def _focal_per_record(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """smp's multiclass FocalLoss (gamma 2, no alpha) per record: its sigmoid focal term of each
    class's channel, mean over the record's pixels, mean over classes. The mean over records of
    equal size is smp's batch value."""
    from segmentation_models_pytorch.losses._functional import focal_loss_with_logits

    target = _soft_targets(y, logits.shape[1], smoothing, logits.dtype)
    per_pixel = focal_loss_with_logits(logits, target, gamma=2.0, alpha=None, reduction="none")
    return per_pixel.flatten(2).mean(2).mean(1)


def record_losses(logits: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe) -> torch.Tensor:
    """(B,) losses, one per record, each a mean over that record's pixels: what DP-SGD clips, and
    whose mean over the batch is the batch loss of plain training. Label smoothing smooths the
    targets of every loss (cross-entropy's own definition, applied to Dice and focal alike)."""
    eps = recipe.label_smoothing
    if recipe.loss not in LOSSES:
        raise ValueError(f"federation.loss: expected one of {', '.join(LOSSES)}, found {recipe.loss!r}")
    out = 0
    if recipe.loss in ("ce", "dice+ce"):
        out = F.cross_entropy(logits, y, reduction="none", label_smoothing=eps).flatten(1).mean(1)
    if recipe.loss in ("dice", "dice+ce"):
        out = out + _dice_per_record(logits, y, eps)
    if recipe.loss == "focal":
        out = _focal_per_record(logits, y, eps)
    return out


def batch_loss(logits: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe) -> torch.Tensor:
    """The recipe's loss of a batch: the mean of its records' losses (for ce, PyTorch's own
    pixel mean, the same number for records of one size)."""
    if recipe.loss == "ce":
        return F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
    return record_losses(logits, y, recipe).mean()


# ---- augmentation: per record, seeded ----------------------------------------------------------
def augment_batch(x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe, rng: np.random.Generator):
    """Each record on its own (so it composes with DP-SGD, which clips per record, and crop):
    flips left-right and up-down (each p = 1/2), a rotation by k·90°, and an intensity change
    x·U(1 − a, 1 + a) + U(−a, a). Masks follow the geometric changes only. Draws from `rng` in
    a fixed order, so a seed fixes the augmentation."""
    if not recipe.augments or len(x) == 0:
        return x, y
    n = len(x)
    flips = rng.random((n, 2)) < 0.5 if recipe.flips else np.zeros((n, 2), dtype=bool)
    turns = rng.integers(0, 4, n) if recipe.rot90 else np.zeros(n, dtype=np.int64)
    if recipe.intensity > 0:
        a = recipe.intensity
        scale = torch.as_tensor(rng.uniform(1 - a, 1 + a, n), dtype=x.dtype, device=x.device)
        shift = torch.as_tensor(rng.uniform(-a, a, n), dtype=x.dtype, device=x.device)
        x = x * scale.view(-1, *([1] * (x.dim() - 1))) + shift.view(-1, *([1] * (x.dim() - 1)))
    if recipe.flips or recipe.rot90:
        xs, ys = [], []
        for i in range(n):
            xi, yi = x[i], y[i]
            dims = [d for d, flip in zip((-1, -2), flips[i]) if flip]
            if dims:
                xi, yi = xi.flip(dims), yi.flip(dims)
            if turns[i]:
                xi, yi = torch.rot90(xi, int(turns[i]), (-2, -1)), torch.rot90(yi, int(turns[i]), (-2, -1))
            xs.append(xi)
            ys.append(yi)
        x, y = torch.stack(xs), torch.stack(ys)
    return x, y


# ---- learning-rate schedule within one local run ----------------------------------------------
def lr_factor(recipe: TrainRecipe, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The share of `recipe.lr` at `step` of `epoch` (both from 0): constant 1; step: gamma per
    `step_epochs` epochs; cosine: from 1 down to `min_lr_ratio` at the run's last step."""
    if recipe.schedule == "step":
        return recipe.gamma ** (epoch // recipe.step_epochs)
    if recipe.schedule == "cosine":
        total = max(1, recipe.epochs * steps_per_epoch - 1)
        t = min(1.0, (epoch * steps_per_epoch + step) / total)
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def set_lr(optimizer, recipe: TrainRecipe, epoch: int, step: int, steps_per_epoch: int) -> None:
    """Set every parameter group's lr for this step (Opacus's optimizers share the wrapped one's groups)."""
    if recipe.schedule == "constant":
        return
    lr = recipe.lr * lr_factor(recipe, epoch, step, steps_per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr


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


def batches_per_epoch(count: int, batch_size: int) -> int:
    """How many batches `minibatches` yields (the schedule's steps per epoch)."""
    full, rest = divmod(count, batch_size)
    return max(1, full + (1 if rest >= 2 or (rest == 1 and count == 1) else 0))


def train_local(
    model: nn.Module, records: Records, recipe: TrainRecipe, *, seed: int, device: torch.device
) -> dict[str, float]:
    """Plain minibatch training with the recipe's loss, schedule and augmentation (the
    adversary's reference models, replays and rehearsals; a client's own training is
    `fedmia.local.LocalRun`, which reduces to this when no defense is active). Returns the mean
    loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = torch.as_tensor(records.images)
    masks = torch.as_tensor(records.masks)
    model.to(device).train()
    optimizer = make_optimizer(model, recipe)
    steps = batches_per_epoch(len(records), recipe.batch_size)
    last_epoch_loss = float("nan")
    for epoch in range(recipe.epochs):
        total, seen = 0.0, 0
        for step, batch in enumerate(minibatches(len(records), recipe.batch_size, generator)):
            x, y = augment_batch(images[batch], masks[batch].long(), recipe, rng)
            x, y = x.to(device), y.to(device)
            set_lr(optimizer, recipe, epoch, step, steps)
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model(x), y, recipe)
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
