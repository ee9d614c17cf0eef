"""False positives far from the data (Hintersdorf et al., "Do Not Trust Prediction Scores").

For every attack: the share of non-members from each out-of-distribution set that it calls
"member", at the adversary's own threshold and at the threshold that catches half the member
targets (TPR = 50%). Held-out in-distribution non-members are the reference row.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmia.data.ood import make_ood_set
from fedmia.data.records import Records
from fedmia.evaluation.metrics import false_positive_rate, threshold_at_tpr
from fedmia.training import inference_batch

ALL_SETS = ("heldout", "noise", "other-dataset", "scaled", "permuted", "optimised-fakes")


def optimised_fakes(model, reference: Records, count: int, seed: int, device, steps: int = 40,
                    batch_size: int | None = None) -> Records:
    """Inputs made by gradient ascent on the served model's mean max-softmax, from uniform noise
    (a stand-in for GAN samples); their 'ground truth' is the model's own prediction. The
    evaluator builds them with the served module itself (it is not an attack). Made
    `batch_size` at a time, each batch with its own optimiser: memory is that of one batch's
    backward pass whatever `count` (all at once held ~10 GB at 256×256 with a ResNet-34 Unet)."""
    for p in model.parameters():
        p.requires_grad_(False)
    # a backward pass holds every activation: 16 fakes up to 64×64, one at a time at 256×256
    # (16 at once held ~4.5 GB there with a ResNet-34 Unet); per fake the work is the same
    batch_size = batch_size or max(1, inference_batch(reference.images) // 4)
    generator = torch.Generator().manual_seed(seed)
    images, masks = [], []
    try:
        for start in range(0, count, batch_size):
            shape = (min(batch_size, count - start), *reference.images.shape[1:])
            x = torch.rand(shape, generator=generator).to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=0.05)
            for _ in range(steps):
                optimizer.zero_grad()
                (-torch.softmax(model(x), 1).max(1).values.mean()).backward()
                optimizer.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
            with torch.no_grad():
                masks.append(model(x).argmax(1).cpu().numpy())
            images.append(x.detach().cpu().numpy())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    ids = np.array([f"ood-fake:{i:05d}" for i in range(count)], dtype=object)
    return Records(np.concatenate(images), np.concatenate(masks), ids)


def ood_sets(served, plan, names, count: int, seed: int, device, report=None, steps: int = 40) -> dict[str, Records]:
    target_ids = set(plan.targets.ids)
    spare = [i for i, rid in enumerate(plan.heldout.ids) if rid not in target_ids]
    heldout = plan.heldout.subset(spare[:count] if len(spare) >= 10 else list(range(min(count, len(plan.heldout)))))
    sets = {}
    for name in names:
        if name == "heldout":
            sets[name] = heldout
        elif name == "optimised-fakes":
            sets[name] = optimised_fakes(served, plan.heldout, count, seed, device, steps=steps)
        else:
            sets[name] = make_ood_set(name, plan.heldout, plan.info, count=count, seed=seed)
        if report is not None:
            report(name)
    return sets


def ood_scores(served, plan, results: dict, names, count: int, seed: int, device, report=None,
               steps: int = 40) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """Every attack's scores on every OOD set ({attack: {set: scores}}) and the sets' sizes: the
    attack side of the figure, no ground truth. `report(name)` is called as each OOD set is
    ready (progress); `steps`: per batch of optimised fakes."""
    sets = ood_sets(served, plan, names, count, seed, device, report, steps=steps)
    scored = {attack_name: {name: np.asarray(result.attack.score(result.view, records), dtype=float)
                            for name, records in sets.items()}
              for attack_name, result in results.items() if result.scores is not None}
    return scored, {k: len(v) for k, v in sets.items()}


def ood_rates(scored: dict[str, dict[str, np.ndarray]], results: dict, is_member: np.ndarray,
              sizes: dict[str, int]) -> dict:
    """The evaluator's side: the share of each OOD set an attack calls member, at its own
    threshold and at the threshold that catches half the member targets."""
    at_threshold, at_tpr50 = {}, {}
    for attack_name, by_set in scored.items():
        result = results[attack_name]
        half = threshold_at_tpr(result.scores, is_member, 0.5)
        at_tpr50[attack_name] = {name: false_positive_rate(s, half) for name, s in by_set.items()}
        if result.threshold is not None:
            at_threshold[attack_name] = {name: false_positive_rate(s, result.threshold) for name, s in by_set.items()}
    return {"ood": at_threshold, "ood_at_tpr50": at_tpr50, "ood_sets": dict(sizes)}
