"""Turn a finished run (transcript + attack scores) into metrics.json, using the ledger.

This is the only module that joins attack scores with ground-truth membership.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmia.defenses import active
from fedmia.evaluation.isolation import isolation_metrics
from fedmia.evaluation.privacy import privacy_metrics
from fedmia.evaluation.metrics import membership_metrics
from fedmia.evaluation.ood import ood_rates
from fedmia.evaluation.schema import RunMetrics, check_metrics
from fedmia.models import describe_model, scenario_model, set_weights
from fedmia.training import evaluate_utility, pick_device


def utility_per_round(scenario, plan, transcript) -> list[dict]:
    """Dice/mIoU of each round's global model on held-out data (never trained on)."""
    info = plan.info
    model = scenario_model(scenario, info)
    device = pick_device(scenario.runtime.device)
    rounds = []
    for view in transcript.rounds:
        if view.aggregate is None:
            continue
        set_weights(model, view.aggregate)
        utility = evaluate_utility(model, plan.heldout, info.num_classes, device)
        rounds.append({"round": view.round, "dice": utility["dice"], "miou": utility["miou"],
                       "loss": utility["loss"], "clients": len(view.replies), "failures": view.failures,
                       # clients whose receive-side check refused the model they were sent
                       "refused": sum(1 for r in view.replies if r.metrics.get("refused")),
                       # the clients' own figures on their own (member) records, when asked for
                       **({"federated": view.federated_evaluation} if view.federated_evaluation else {})})
    return rounds


def membership_section(scenario, ledger, target_ids, results: dict, num_clients: int,
                       plan=None) -> tuple[dict, dict]:
    """The figures that need ground truth: ({"attacks", "skipped_attacks", "source_inference",
    "isolation", "targets"} as present, ROC curves per attack). Every attack row carries 95%
    intervals (stratified bootstrap over targets, seeded by the scenario). `plan` (with its
    clients' records) is needed only for the isolation figures."""
    is_member = ledger.is_member(target_ids)
    owners = ledger.client_of(target_ids)
    levels = tuple(scenario.evaluation.tpr_at_fpr)
    attacks, curves, out = {}, {}, {}
    skipped = {name: r.skipped for name, r in results.items() if r.skipped is not None}
    for name, result in results.items():
        if result.skipped is not None:
            continue
        scores, labels = result.scores, is_member
        if result.scope_client is not None:  # e.g. isolation: one client's members vs non-members
            keep = (owners == result.scope_client) | ~is_member
            scores, labels = scores[keep], is_member[keep]
        row = membership_metrics(scores, labels, fpr_levels=levels, threshold=result.threshold,
                                 intervals=True, seed=scenario.seed).to_dict()
        if result.chosen:
            row["chosen"] = result.chosen
        if result.scope_client is not None:
            row["scope"] = f"client {result.scope_client}'s members vs all non-members"
        attacks[name] = row
        curves[name] = (scores, labels)
        if result.recovered is not None and plan is not None and plan.clients:
            out["isolation"] = isolation_metrics(scenario, plan, result, scores, labels)
        if result.owners is not None:
            out["source_inference"] = {**source_inference_metrics(result.owners, owners, num_clients),
                                       "attack": name}
    out["attacks"] = attacks
    if skipped:
        out["skipped_attacks"] = skipped
    out["targets"] = {"members": int(is_member.sum()), "nonmembers": int((~is_member).sum())}
    return out, curves


@dataclass(frozen=True)
class Evaluation:
    """What the evaluator found, before the run's clock stops: every section of metrics.json but
    the timing, and the ROC curves to plot. `metrics(timing)` builds the run's one RunMetrics,
    complete: nothing edits it afterwards."""

    sections: dict[str, Any]
    curves: dict

    @property
    def rounds(self) -> list[dict]:
        return self.sections["utility"]["rounds"]

    def metrics(self, timing: dict[str, float]) -> RunMetrics:
        return check_metrics({**self.sections, "timing": timing})  # a renamed figure fails here


@dataclass(frozen=True)
class OODScored:
    """The attacks' scores on each OOD set (`evaluation.ood_scores`), the sets' sizes, and the
    optimised fakes' steps the budget chose."""

    scores: dict
    sizes: dict
    fake_steps: int | None


def evaluate_run(scenario, plan, transcript, results: dict, *, ood: OODScored | None = None,
                 served: tuple[Any, str, Any] | None = None, client: str | None = None) -> Evaluation:
    """The run's figures. `ood`: the OOD sets' scores; `served`: (model, what it is, device) when
    a defense serves another model than the federation's (its utility is the headline; the global
    model's is kept beside it). Without a ledger (a multi-site audit) the membership figures wait
    for `fedmia evaluate --manifests` (fedmia/evaluation/manifests.py)."""
    rounds = utility_per_round(scenario, plan, transcript)
    final = rounds[-1] if rounds else {"dice": float("nan"), "miou": float("nan")}
    model = scenario.model
    records = int(sum(len(c) for c in plan.clients))
    # a user's own Flower app trained the federation: say so, and what the adversary's own
    # reference and shadow models trained with (the scenario's recipe, fedmia's loop)
    app = {"client": client, "reference_models": "trained with the scenario's recipe in fedmia's training loop, "
           "not through the app's ClientApp"} if client else {}
    grouped = any(c.groups is not None for c in plan.clients)  # NIfTI slices: a scan is the member
    utility = {"dice": final["dice"], "miou": final["miou"], "rounds": rounds}
    if served is not None:  # the defense's utility cost is on what is served
        served_model, released, device = served
        of_served = evaluate_utility(served_model, plan.heldout, plan.info.num_classes, device)
        utility = {**utility, "global_model": {"dice": utility["dice"], "miou": utility["miou"]},
                   "dice": of_served["dice"], "miou": of_served["miou"], "released": released}
    metrics = {
        "scenario": scenario.name,
        "description": scenario.description,
        "setup": {
            "dataset": scenario.data.dataset,
            "clients": scenario.federation.clients,
            # in the unit the scenario counts (data.members): scans when records come in groups
            "members": (scenario.data.members if grouped else records) if plan.ledger is not None else None,
            **({"member_records": records} if grouped and plan.ledger is not None else {}),
            "rounds": scenario.federation.rounds,
            "local_epochs": scenario.federation.local_epochs,
            "model": describe_model(model),
            "server": scenario.server.strategy,
            "defenses": describe_defenses(scenario),
            "fpr_convention": "TPR at FPR strictly below each level (the LiRA paper's)",
            **app,
        },
        "utility": utility,
        "attacks": {},
    }
    curves = {}
    if plan.ledger is not None:
        membership, curves = membership_section(scenario, plan.ledger, plan.targets.ids, results,
                                                len(plan.clients), plan)
        metrics["setup"]["targets"] = membership.pop("targets")
        metrics.update(membership)
        if ood is not None:
            metrics.update(ood_rates(ood.scores, results, plan.ledger.is_member(plan.targets.ids), ood.sizes))
            metrics["ood_fake_steps"] = ood.fake_steps  # what the budget chose (evaluation.ood_steps unset)
    else:
        metrics["setup"]["sites"] = [site.name for site in scenario.data.sites]
        metrics["membership"] = ("pending: the sites' manifests give the ground truth; run "
                                 "`fedmia evaluate RUN --manifests DIR`")
        skipped = {name: r.skipped for name, r in results.items() if r.skipped is not None}
        if skipped:
            metrics["skipped_attacks"] = skipped
    privacy = privacy_metrics(scenario, plan, transcript)
    if privacy is not None:
        metrics["privacy"] = privacy
    return Evaluation(metrics, curves)


def source_inference_metrics(predicted: np.ndarray, owners: np.ndarray, num_clients: int) -> dict:
    """Accuracy over member targets against the 1/K chance level, and the confusion matrix
    (rows: true client, columns: predicted client). `owners`: each target's client, -1 if none."""
    members = owners >= 0
    truth, guess = owners[members], np.asarray(predicted)[members]
    confusion = np.zeros((num_clients, num_clients), dtype=int)
    for t, g in zip(truth, guess):
        if 0 <= g < num_clients:
            confusion[t, g] += 1
    return {"accuracy": float(np.mean(truth == guess)) if len(truth) else float("nan"),
            "chance": 1.0 / num_clients, "n": int(len(truth)), "confusion": confusion.tolist()}



def describe_defenses(scenario) -> str:
    """Every active defense, in each plug-in's own words (and the clients' config pin)."""
    parts = [defense.describe() for defense in active(scenario)]
    if scenario.federation.pin_hyperparameters:
        parts.append("pinned hyperparameters")
    if scenario.federation.weight_decay:
        parts.append(f"weight decay {scenario.federation.weight_decay}")
    return ", ".join(parts) or "none"
