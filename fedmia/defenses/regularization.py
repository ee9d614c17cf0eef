"""Training-time defenses on the clients (the segmentation-MIA paper's table, federated).

Each changes only how a client trains on its records in one round:
  crop         — train on random crops (the model never sees a whole member image);
  mixup        — convex mixes of two images, the loss mixed with the same weight;
  minmax       — adversarial regularisation (Nasr et al. 2018): an inline attack model learns to
                 tell the client's training batch from public reference records, and the model
                 is trained to fool it (loss + weight · attack's log-gain on members);
  distillation — the client trains a teacher on its records as usual, then releases a student
                 trained from the received model on the teacher's soft labels over public records
                 only (its own records never touch the released weights directly).
Reference/public records come from `data.public`: disjoint from members, held-out and population.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedmia.data.records import Records
from fedmia.training import TrainRecipe, make_optimizer, minibatches, train_local


def random_crops(x: torch.Tensor, y: torch.Tensor, size: int, rng: np.random.Generator):
    """One random size×size window per image (and its mask)."""
    h, w = x.shape[-2:]
    tops = rng.integers(0, h - size + 1, len(x))
    lefts = rng.integers(0, w - size + 1, len(x))
    xs = torch.stack([x[i, :, t : t + size, l : l + size] for i, (t, l) in enumerate(zip(tops, lefts))])
    ys = torch.stack([y[i, t : t + size, l : l + size] for i, (t, l) in enumerate(zip(tops, lefts))])
    return xs, ys


def loss_quantiles(log_p_true: torch.Tensor, levels: int = 8) -> torch.Tensor:
    """The inline attack's view of an image: quantiles of its per-pixel true-class log-probability
    (differentiable, so the model can be trained against the attack)."""
    q = torch.linspace(0.0, 1.0, levels, device=log_p_true.device)
    return torch.quantile(log_p_true.flatten(1), q, dim=1).T


class InlineAttack(nn.Module):
    def __init__(self, levels: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(levels, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # logit of "member"


def _true_class_log_p(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(x), dim=1).gather(1, y.unsqueeze(1)).squeeze(1)


def train_regularised(model: nn.Module, records: Records, recipe: TrainRecipe, spec, *, seed: int,
                      device: torch.device, public: Records | None = None) -> dict[str, float]:
    """Local training under the training-time defenses of `spec` (the scenario's `defenses`)."""
    if spec.distillation is not None:
        return distil(model, records, recipe, spec.distillation, seed=seed, device=device, public=public)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, masks = torch.as_tensor(records.images), torch.as_tensor(records.masks)
    model.to(device).train()
    optimizer = make_optimizer(model, recipe)
    attack = attack_optimizer = None
    if spec.minmax is not None:
        attack = InlineAttack().to(device)
        attack_optimizer = torch.optim.Adam(attack.parameters(), lr=1e-3)
        ref_images, ref_masks = torch.as_tensor(public.images), torch.as_tensor(public.masks)
    last = float("nan")
    for _ in range(recipe.epochs):
        total, seen = 0.0, 0
        for batch in minibatches(len(records), recipe.batch_size, generator):
            x, y = images[batch], masks[batch]
            if spec.crop is not None:
                x, y = random_crops(x, y, spec.crop.size, rng)
            x, y = x.to(device), y.to(device)
            if spec.minmax is not None:
                # 1) the attack learns on this batch (members) vs public records (non-members)
                ref = torch.as_tensor(rng.choice(len(ref_images), size=len(batch), replace=len(ref_images) < len(batch)))
                rx, ry = ref_images[ref].to(device), ref_masks[ref].to(device)
                with torch.no_grad():
                    features = torch.cat([loss_quantiles(_true_class_log_p(model, x, y)),
                                          loss_quantiles(_true_class_log_p(model, rx, ry))])
                labels = torch.cat([torch.ones(len(x)), torch.zeros(len(rx))]).to(device)
                for _ in range(spec.minmax.attack_steps):
                    attack_optimizer.zero_grad(set_to_none=True)
                    F.binary_cross_entropy_with_logits(attack(features), labels).backward()
                    attack_optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if spec.mixup is not None:
                lam = float(rng.beta(spec.mixup.alpha, spec.mixup.alpha))
                pair = torch.as_tensor(rng.permutation(len(x)), device=x.device)
                logits = model(lam * x + (1 - lam) * x[pair])
                loss = (lam * F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                        + (1 - lam) * F.cross_entropy(logits, y[pair], label_smoothing=recipe.label_smoothing))
            else:
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            if spec.minmax is not None:
                log_p = torch.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
                # the attack's log-gain on members: log P(member); minimising it fools the attack
                gain = F.logsigmoid(attack(loss_quantiles(log_p))).mean()
                loss = loss + spec.minmax.weight * gain
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        last = total / max(seen, 1)
    return {"train-loss": last}


def distil(model: nn.Module, records: Records, recipe: TrainRecipe, spec, *, seed: int,
           device: torch.device, public: Records) -> dict[str, float]:
    """Teacher: the received model trained on the client's records. Student (returned in
    `model`): the received model trained on the teacher's soft labels over public records."""
    teacher = copy.deepcopy(model)
    stats = train_local(teacher, records, recipe, seed=seed, device=device)
    teacher.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    images = torch.as_tensor(public.images)
    model.to(device).train()
    optimizer = make_optimizer(model, recipe)
    t = spec.temperature
    for _ in range(spec.epochs or recipe.epochs):
        for batch in minibatches(len(images), recipe.batch_size, generator):
            x = images[batch].to(device)
            with torch.no_grad():
                soft = torch.softmax(teacher(x) / t, dim=1)
            optimizer.zero_grad(set_to_none=True)
            log_student = torch.log_softmax(model(x) / t, dim=1)
            # KL(teacher || student) per pixel, scaled by t² as in Hinton et al.
            loss = (soft * (torch.log(soft.clamp_min(1e-12)) - log_student)).sum(1).mean() * t * t
            loss.backward()
            optimizer.step()
    return {**stats, "distil-loss": loss.item()}
