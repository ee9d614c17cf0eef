"""Training what the plan needs: every group over its seeds (reusing finished runs), then each
group's replication (replicate.json on disk, the typed runs in memory)."""

from __future__ import annotations

from pathlib import Path

from fedmia.audit.plan import Group
from fedmia.replicate import Replication
from fedmia.scenario import Scenario


RUNS_TRAINED = 0  # federations trained (or resumed) by this process: a reused run does not count


def _run(folder: Path, scenario: Scenario, console, runs=None) -> str:
    """One seed's run, reused when finished; counts what it trains."""
    global RUNS_TRAINED
    from fedmia.sweep import run_or_reuse

    _, how = (runs or run_or_reuse)(folder, scenario, console)
    if how != "reused":
        RUNS_TRAINED += 1
    return how


def _seed_point(scenario: Scenario, k: int) -> Scenario:
    # exactly run_replicate's point, so that its reuse finds these runs
    return scenario.model_copy(update={"seed": scenario.seed + k, "name": f"{scenario.name}-seed{scenario.seed + k}"})


def run_groups(groups: list[Group], seeds: int, console=None, *, manifests: Path | None = None,
               runs=None) -> tuple[dict[str, int], dict[int, Replication]]:
    """Train what is not finished (progress: runs done / to do, the current step), then each
    group's replication. Returns ({'trained': n, 'reused': m}, {id(group): its Replication}).
    `manifests`: a multi-site federation's ground truth; `runs`: how one seed trains (a user's
    app: `fedmia.audit_app.AppRuns`; default fedmia's own federation)."""
    from fedmia.evaluation.run import finished_run
    from fedmia.pipeline import progress_bar
    from fedmia.replicate import run_replicate

    def finished(folder: Path, scenario: Scenario) -> bool:
        return (runs.finished(folder, scenario) if runs is not None else finished_run(folder, scenario)) is not None

    units = [(g, k) for g in groups for k in range(seeds)]
    todo = [(g, k) for g, k in units if not finished(g.folder / f"seed-{k:02d}", _seed_point(g.scenario, k))]
    counts = {"trained": 0, "reused": len(units) - len(todo)}
    if console is not None:
        console.print(f"[bold]audit[/]: {len(units)} runs ({len(groups)} federations × {seeds} seeds), "
                      f"{counts['reused']} finished already, {len(todo)} to train")
    for i, (group, k) in enumerate(todo):
        step = f"{'+'.join(group.threat_models)} · defenses {group.defense} · seed {group.scenario.seed + k}"
        with progress_bar(console) as progress:  # one line per step; the run shows its own bars
            progress.add_task(f"audit: run {i + 1}/{len(todo)}: {step}", total=len(units),
                              completed=counts["reused"] + counts["trained"])
        _run(group.folder / f"seed-{k:02d}", _seed_point(group.scenario, k), console, runs)
        counts["trained"] += 1
    replications = {}
    with progress_bar(console) as progress:
        task = progress.add_task("audit: replicate.json per federation", total=len(groups))
        for group in groups:
            # every seed is finished: reads each run once, through its reader
            replications[id(group)] = run_replicate(group.scenario, seeds, group.folder, manifests=manifests,
                                                    train=runs)
            progress.advance(task)
    return counts, replications
