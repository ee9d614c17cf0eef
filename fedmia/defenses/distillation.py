"""Knowledge distillation: the client trains a teacher on its records as usual, then returns a
student — started from the received model — fitted to the teacher's temperature-softened maps
over the public records only, so its own records never touch the returned weights directly."""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from fedmia.defenses.base import Defense, Params, needs_public, register_defense
from fedmia.training import make_optimizer, minibatches, train_local


class DistillationParams(Params):
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the teacher's and student's maps")
    epochs: int | None = Field(None, ge=1, description="student epochs over the public set (default: local_epochs)")


@register_defense("distillation", acts_on="local training")
class Distillation(Defense):
    Params = DistillationParams
    _why = "the student trains on public records only; expected no {} alongside it"
    conflicts = {"crop": _why.format("crop"), "mixup": _why.format("mixup"), "minmax": _why.format("minmax"),
                 "dp": "the teacher would need DP-SGD and the student post-processing; not built, "
                       "expected one of them"}

    def describe(self) -> str:
        return f"distillation (T {self.params.temperature})"

    def problems(self, scenario) -> list[tuple[str, str]]:
        return needs_public(scenario, "defenses.distillation")

    def train(self, run) -> dict[str, float]:
        """Teacher: the received model trained on the client's records. Student (returned in
        `run.model`): the received model trained on the teacher's soft labels over public records."""
        model, recipe = run.model, run.recipe
        teacher = copy.deepcopy(model)
        stats = train_local(teacher, run.records, recipe, seed=run.seed, device=run.device)
        teacher.eval()
        generator = torch.Generator().manual_seed(run.seed + 1)
        images = torch.as_tensor(run.public.images)
        model.to(run.device).train()
        optimizer = make_optimizer(model, recipe)
        t = self.params.temperature
        for _ in range(self.params.epochs or recipe.epochs):
            for batch in minibatches(len(images), recipe.batch_size, generator):
                x = images[batch].to(run.device)
                with torch.no_grad():
                    soft = torch.softmax(teacher(x) / t, dim=1)
                optimizer.zero_grad(set_to_none=True)
                log_student = torch.log_softmax(model(x) / t, dim=1)
                # KL(teacher || student) per pixel, scaled by t² as in Hinton et al.
                loss = (soft * (torch.log(soft.clamp_min(1e-12)) - log_student)).sum(1).mean() * t * t
                loss.backward()
                optimizer.step()
        return {**stats, "distil-loss": loss.item()}
