"""The `optimised-fakes` OOD set: inputs made by gradient ascent against the served model.

A plug-in of the `fedmia.ood_sets` group like the others; it lives beside the evaluator because
it needs the served model and torch (the data layer below imports neither).
"""

from __future__ import annotations

import numpy as np
import torch

from fedmia.data.ood import OODRequest, register_ood_set
from fedmia.data.records import Records
from fedmia.training import inference_batch


@register_ood_set("optimised-fakes")
def _optimised_fakes(request: OODRequest) -> Records:
    """Noise pushed by gradient ascent (`evaluation.ood_steps` steps) to the served model's most
    confident outputs; masks are the model's own predictions."""
    if request.model is None:
        raise ValueError("OOD set 'optimised-fakes' is made against the served model; none was given")
    return optimised_fakes(request.model, request.reference, request.count, request.seed, request.device,
                           steps=request.steps)


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
