"""`fedmia evaluate RUN --manifests DIR`: a multi-site audit's membership figures.

The run (simulated or deployed) wrote what the adversary produced — scores.csv and
adversary_output.json (thresholds, owners, OOD scores, each target's file digest) — and no
ground truth, because nobody on the server side has it. The sites' manifests (fedmia/data/sites.py)
tell which targets each site trained on; here they are joined with the saved scores, and the
run folder gets ledger.json and the same figures a single-pool run computes in one go
(`fedmia.evaluation.run_metrics.membership_section`, the same code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmia.attacks.base import AttackResult
from fedmia.data.plan import MembershipLedger
from fedmia.data.sites import ledger_from_manifests, read_manifests, scan_of
from fedmia.evaluation.compare import RunFolderError, read_scores
from fedmia.evaluation.run import load_run, read_run_json
from fedmia.evaluation.schema import RunMetrics, check_metrics
from fedmia.evaluation.ood import ood_rates
from fedmia.evaluation.plots import plot_roc
from fedmia.evaluation.report import render_report
from fedmia.evaluation.run_metrics import membership_section
from fedmia.io import write_json_atomic, write_text_atomic

ADVERSARY_OUTPUT = "adversary_output.json"  # written by fedmia.pipeline.finish_run


def evaluate_with_manifests(scenario, run_dir: Path, manifests: Path) -> RunMetrics:
    """Join the run's saved scores with the sites' manifests: the run's complete metrics, built
    from its pending ones and the membership figures; rewrite metrics.json, report.md,
    roc.png and write ledger.json. `scenario`: the run folder's own scenario.yaml, loaded.
    Raises RunFolderError / ManifestError (message names the file)."""
    run_dir = Path(run_dir)
    if not scenario.data.multi_site:
        raise RunFolderError(f"{run_dir}: not a multi-site run (its scenario has no data.sites); "
                             "its metrics.json already holds the membership figures")
    output = read_run_json(run_dir / ADVERSARY_OUTPUT)
    pending = load_run(run_dir).metrics.as_json()
    if not (run_dir / "scores.csv").is_file():
        raise RunFolderError(f"{run_dir / 'scores.csv'}: missing (not a finished run folder)")
    ids, scores = read_scores(run_dir / "scores.csv")
    names = [site.name for site in scenario.data.sites]
    owner, counts = read_manifests(manifests, names)
    unknown = [rid for rid in ids if scan_of(rid) not in output["target_digests"]]
    if unknown:
        raise RunFolderError(f"{run_dir / ADVERSARY_OUTPUT}: target_digests: no digest for {unknown[:3]}")
    ledger = MembershipLedger(ledger_from_manifests(output["target_digests"], owner, ids))

    results = {}
    for name, saved in output["attacks"].items():
        results[name] = AttackResult(scores=scores.get(name), threshold=saved["threshold"], skipped=saved["skipped"],
                                     scope_client=saved["scope_client"], chosen=saved.get("chosen"),
                                     owners=None if saved["owners"] is None else np.asarray(saved["owners"]))
    membership, curves = membership_section(scenario, ledger, ids, results, len(names))
    metrics = {k: v for k, v in pending.items() if k != "membership"}
    metrics["setup"] = {**pending["setup"], "targets": membership.pop("targets"), "members": sum(counts.values())}
    metrics.update(membership)
    metrics["ground_truth"] = {"source": f"site manifests in {manifests}", "records_per_site": counts}
    if output.get("ood_scores"):
        scored = {a: {k: np.asarray(v) for k, v in by_set.items()} for a, by_set in output["ood_scores"].items()}
        metrics.update(ood_rates(scored, results, ledger.is_member(ids), output["ood_sets"]))
        if output.get("ood_fake_steps") is not None:
            metrics["ood_fake_steps"] = output["ood_fake_steps"]

    write_json_atomic(run_dir / "ledger.json", ledger.to_json())
    plot_roc(curves, run_dir / "roc.png", title=f"{scenario.name}: membership inference (log-log ROC)")
    joined = check_metrics(metrics, str(run_dir / "metrics.json"))
    write_json_atomic(run_dir / "metrics.json", joined.as_json())
    write_text_atomic(run_dir / "report.md", render_report(joined.as_json(), roc_png="roc.png", utility_png="utility.png"))
    return joined
