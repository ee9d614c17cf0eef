"""LiRA's per-record statistic on segmentation maps: mean over pixels vs a per-pixel
likelihood-ratio sum, measured on a finished run (its transcript and cached reference models).

    fedmia run scenarios/lira.yaml --out runs/lira     # once: trains and caches the references
    python bench/lira_aggregation.py runs/lira

Both use the same K reference models, the same logit-scaled true-class confidence
φ = log(p_y / (1 − p_y)) and the same per-model calibration (each model's φ minus its median on
population records it did not train on). "mean" fits one Gaussian per record to the image-mean
φ (what fedmia ships); "pixel-sum" fits one Gaussian per pixel and sums the per-pixel
log-likelihood ratios (online) or log-CDFs (offline), with a floor on the per-pixel std.
Prints AUC and TPR at 1% / 0.1% FPR for every variant; this reads the ledger (it is an
evaluation, not an attack) — so it compares variants on ground truth, and must run on a seed the
README's figures do not use (it refuses seeds 0–9: run e.g. `seed: 100`). The shipped default
(`aggregation: mean`, shared variance below 64 models) is the LiRA paper's, fixed in advance,
not the winner of this comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from fedmia.attacks.reference_models import ReferenceModels
from fedmia.data.plan import build_plan
from fedmia.evaluation.metrics import membership_metrics
from fedmia.models import set_weights
from fedmia.pipeline import adversary_view
from fedmia.validation import load_scenario
from fedmia.transcript import Transcript


@torch.no_grad()
def phi_maps(model, records) -> np.ndarray:
    """(records, pixels) logit-scaled true-class confidence."""
    model.eval()
    maps = []
    for start in range(0, len(records), 64):
        x = torch.as_tensor(records.images[start : start + 64])
        y = torch.as_tensor(records.masks[start : start + 64])
        log_py = torch.log_softmax(model(x).float(), 1).gather(1, y.unsqueeze(1)).squeeze(1)
        maps.append((log_py - torch.log1p(-log_py.exp().clamp(max=1 - 1e-7))).flatten(1).numpy())
    return np.concatenate(maps)


def gaussians(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    chosen = np.where(mask, values, np.nan)
    return np.nanmean(chosen, 0), np.nanstd(chosen, 0, ddof=1)


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/lira")
    scenario = load_scenario(run / "scenario.yaml")
    if scenario.seed < 10:
        sys.exit(f"{run}: seed {scenario.seed} is one the README's figures use; comparing variants on its "
                 "ground truth would tune on the answer — rerun the scenario with seed >= 10")
    transcript = Transcript.load(run / "transcript")
    view = adversary_view(scenario, transcript)
    refs = ReferenceModels(view, 8, None)
    model = view.model_factory()
    per_model = []
    for index in range(len(refs.inclusion)):
        set_weights(model, refs.weights(index))
        per_model.append(phi_maps(model, refs.pool))
    reference = np.stack(per_model)  # (K, pool, pixels)
    target = phi_maps(view.model_with(transcript.final), refs.pool)  # (pool, pixels)
    print(f"reference models trained now: {refs.trained} (0 = all from the cache)")

    n_pop = len(view.population)
    inside = refs.inclusion
    centres = np.array([np.median(reference[k, :n_pop].mean(1)[~inside[k, :n_pop]]) for k in range(len(reference))])
    reference = reference - centres[:, None, None]
    target = target - np.median(target[:n_pop].mean(1))
    member = build_plan(scenario).ledger.is_member(view.targets.ids)

    def show(name: str, scores: np.ndarray) -> None:
        m = membership_metrics(scores[n_pop:], member, fpr_levels=(0.001, 0.01))
        tpr = m.tpr_at_fpr
        print(f"{name:34s} AUC {m.auc:.3f}  TPR@1% {tpr['0.01']:.3f}  TPR@0.1% {tpr['0.001']:.3f}")

    ref_mean, tgt_mean = reference.mean(2), target.mean(1)
    mu_in, sd_in = gaussians(ref_mean, inside)
    mu_out, sd_out = gaussians(ref_mean, ~inside)
    show("mean, online", norm.logpdf(tgt_mean, mu_in, np.maximum(sd_in, 1e-3))
         - norm.logpdf(tgt_mean, mu_out, np.maximum(sd_out, 1e-3)))
    show("mean, offline", norm.logcdf(tgt_mean, mu_out, np.maximum(sd_out, 1e-3)))
    mu_in, sd_in = gaussians(reference, inside[:, :, None])
    mu_out, sd_out = gaussians(reference, ~inside[:, :, None])
    for floor in (0.05, 0.3, 1.0):
        show(f"pixel-sum, online, floor {floor}", (norm.logpdf(target, mu_in, np.maximum(sd_in, floor))
                                                  - norm.logpdf(target, mu_out, np.maximum(sd_out, floor))).sum(1))
        show(f"pixel-sum, offline, floor {floor}", norm.logcdf(target, mu_out, np.maximum(sd_out, floor)).sum(1))


if __name__ == "__main__":
    main()
