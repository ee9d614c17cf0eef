"""The commands that train, attack and read runs: init, validate, run, audit-model, compare,
replicate, sweep, evaluate, audit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import click
import typer

from fedmia.io import process_age
from fedmia.stopping import resume_with
from fedmia.scenario import ScenarioError, parse_schema, read_yaml

from fedmia.cli.common import (USAGE_ERROR, check_data_or_exit, folder_or_exit, load_or_exit, out,
                               print_audited_run)


def init(
    data_dir: Path = typer.Argument(..., help="a folder of your scans: images/ + masks/, or imagesTr/ + labelsTr/ (NIfTI), "
                                    "or a sites/<name>/ + auditor/ layout"),
    out_file: Path = typer.Option(Path("my-audit.yaml"), "--out", help="the scenario file to write"),
    force: bool = typer.Option(False, "--force", help="overwrite the scenario file if it exists"),
    for_model: bool = typer.Option(False, "--for-model", help="for a model you train yourself: split the folder "
                                   "into a training site and the auditor's folders, and write the scenario "
                                   "`fedmia audit-model` reads"),
    layout: Optional[Path] = typer.Option(None, "--layout", help="with --for-model: where the split goes "
                                          "(default: NAME-audit beside the scenario file)"),
) -> None:
    """Inspect a folder of scans (count, sizes, channels, classes, volumes) and write a first scenario for it."""
    from fedmia.init_scenario import is_site_layout, write_layout_scenario, write_model_audit, write_scenario

    try:
        if is_site_layout(data_dir):  # sites/<name>/ and auditor/: the multi-site scenario audit-model reads
            _, next_commands = write_layout_scenario(data_dir, out_file, overwrite=force)
        elif for_model:
            _, next_commands = write_model_audit(data_dir, out_file, layout, overwrite=force)
        else:
            _, next_commands = write_scenario(data_dir, out_file, overwrite=force)
    except FileExistsError as error:
        typer.echo(f"{error.args[0] if error.args else out_file} (or give --force to overwrite it)", err=True)
        raise typer.Exit(USAGE_ERROR)
    except ValueError as error:
        text = str(error)
        typer.echo(text if text.startswith(str(data_dir)) else f"{data_dir}: {text}", err=True)
        raise typer.Exit(USAGE_ERROR)
    typer.echo(f"wrote {out_file}; next:")  # plain: commands to copy, never re-wrapped
    for command in next_commands:
        typer.echo(f"  {command}")


def validate(scenario: Path = typer.Argument(..., help="scenario YAML file")) -> None:
    """Check a scenario file without running it."""
    parsed = load_or_exit(scenario)
    check_data_or_exit(scenario, parsed)
    out.print(f"{scenario}: ok ({parsed.name}: {parsed.federation.clients} clients, "
              f"{parsed.federation.rounds} rounds, attacks: {', '.join(parsed.attack_names)})")


def run(
    scenario: Optional[Path] = typer.Argument(None, help="scenario YAML file (omit with --resume)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/NAME)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the interrupted run in this run folder"),
    force: bool = typer.Option(False, "--force", help="a run folder that holds a run: move that run aside "
                               "(to NAME.replaced-TIME) and start again; nothing is deleted"),
    verbose: bool = typer.Option(False, "--verbose", help="show Flower's and Ray's logs, and tracebacks"),
) -> None:
    """Train the federation (Flower simulation on Ray), attack it, write the run folder."""
    from fedmia.runfolder import check_claim

    if resume is not None:
        scenario, folder = _resumable_or_exit(resume, scenario, out_dir)
    elif scenario is None:
        typer.echo("fedmia run: give a scenario file, or --resume RUN_DIR", err=True)
        raise typer.Exit(USAGE_ERROR)
    elif out_dir is not None:
        folder_or_exit(check_claim, out_dir, force=force)  # before anything starts
    parsed = _validate_while_ray_starts(scenario, verbose, folder=resume or out_dir, force=force)
    from fedmia.evaluation import summary_table
    from fedmia.runner import run_scenario

    folder = resume or out_dir or Path("runs") / parsed.name
    resume_with(f"the rounds done so far are kept: fedmia run --resume {folder}")
    # the clock starts with the process: imports and start-up are part of what the user waits
    launched = time.perf_counter() - (process_age() or 0.0)
    metrics = run_scenario(parsed, folder, console=out, verbose=verbose, resume=resume is not None,
                           started=launched, force=force)
    out.print(summary_table(metrics.as_json()))
    out.print(f"run folder: {folder}  (report: {folder / 'report.md'}, "
              f"wall {metrics.timing['wall_s']:.1f} s)")


def audit_model(
    checkpoint: Path = typer.Argument(..., help="the trained model's weights: a state dict file or an smp "
                                      "save_pretrained folder"),
    scenario: Path = typer.Argument(..., help="scenario YAML with data.sites and data.auditor (the auditor's "
                                    "folders), the model's architecture and the recipe it was trained with"),
    manifests: Optional[Path] = typer.Option(None, "--manifests", help="folder of manifests (`fedmia manifest`) "
                                             "of the records the model trained on: membership figures at once"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/NAME)"),
    force: bool = typer.Option(False, "--force", help="a run folder that holds a run: move that run aside first"),
) -> None:
    """Audit a model you already trained: every black-box attack, the OOD sets and utility on the auditor's folders, into the same run folder and report as a federation's."""
    from fedmia.runner import audit_trained_model

    from fedmia.data.sites import ManifestError
    from fedmia.runfolder import RunFolderError

    parsed = load_or_exit(scenario)
    folder = out_dir or Path("runs") / parsed.name
    try:
        metrics = audit_trained_model(parsed, checkpoint, folder, manifests=manifests, console=out, force=force)
    except (ScenarioError, RunFolderError, ManifestError) as error:  # a checkpoint that does not fit, ...
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    print_audited_run(metrics, folder, manifests, "the training records' manifests")


def _validate_while_ray_starts(path: Path, verbose: bool, *, folder: Optional[Path], force: bool):
    """The scenario, validated with its data checked, while Ray starts (~3 s that then overlap
    the imports and checks), if the file passes the schema and the plan's own checks (no torch
    import); a file that fails those starts nothing, one that fails later stops Ray before the
    exit. `folder` None: the default run folder, `runs/NAME`, is checked as soon as the name is
    known, before Ray starts."""
    from fedmia.ray_start import beside_ray_start, quiet_library_notices
    from fedmia.runfolder import check_claim
    from fedmia.validation import name_problems, plan_problems

    def validated():
        parsed = load_or_exit(path)
        check_data_or_exit(path, parsed, sites_here=True)  # before any file is written
        return parsed

    try:
        schema = parse_schema(read_yaml(path), str(path))
    except ScenarioError:
        schema = None  # load_or_exit reports it
    if schema is not None and folder is None:
        folder_or_exit(check_claim, Path("runs") / schema.name, force=force)
    if schema is None or plan_problems(schema) or name_problems(schema):
        return validated()
    if not verbose:
        quiet_library_notices()
    return beside_ray_start(schema, validated)


def _resumable_or_exit(folder: Path, scenario: Optional[Path], out_dir: Optional[Path]) -> tuple[Path, Path]:
    """A resumed run takes its scenario from its own folder: the one it was started with; its
    checkpoint must read back whole."""
    from fedmia.runfolder import check_claim
    from fedmia.transcript import CheckpointError, check_checkpoint

    saved = folder / "scenario.yaml"
    problem = None
    if out_dir is not None and out_dir.resolve() != folder.resolve():
        problem = "--out and --resume name different folders; a resumed run stays in its folder"
    else:
        folder_or_exit(check_claim, folder, resume=True)
        if scenario is not None and load_or_exit(scenario).canonical() != load_or_exit(saved).canonical():
            problem = f"{scenario}: differs from the scenario {saved} was started with; omit it to resume"
        else:
            try:
                check_checkpoint(folder / "transcript")
            except CheckpointError as error:
                problem = f"{error}; start again with `fedmia run {saved} --out {folder} --force`"
    if problem:
        typer.echo(f"fedmia run --resume: {problem}", err=True)
        raise typer.Exit(USAGE_ERROR)
    return saved, folder


def compare(
    runs: list[Path] = typer.Argument(..., help="run folders"),
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", help="where the table and plot go"),
    attack: Optional[list[str]] = typer.Option(None, "--attack", help="only these attacks (repeatable)"),
) -> None:
    """Compare run folders side by side: one table, one overlaid ROC plot."""
    from fedmia.evaluation.compare import RunFolderError, compare_runs

    try:
        _, table = compare_runs(runs, out_dir, attack or None)
    except RunFolderError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    out.print(table)
    out.print(f"written: {out_dir / 'compare.md'}, {out_dir / 'compare_roc.png'}")


def replicate(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    seeds: int = typer.Option(3, "--seeds", min=2, help="independent federations (seed, seed+1, ...)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="replication folder (default: runs/NAME-xSEEDS)"),
    manifests: Optional[Path] = typer.Option(None, "--manifests", help="a multi-site scenario: the sites' manifests"),
) -> None:
    """Run a scenario over N seeds; mean and 95% interval across seeds for every figure."""
    parsed = load_or_exit(scenario)
    check_data_or_exit(scenario, parsed, sites_here=True)
    if parsed.data.multi_site and manifests is None:
        typer.echo(f"{scenario}: data.sites: a multi-site scenario's membership comes from its sites' "
                   "manifests: give --manifests DIR", err=True)
        raise typer.Exit(USAGE_ERROR)
    from rich.table import Table

    from fedmia.replicate import run_replicate

    folder = out_dir or Path("runs") / f"{parsed.name}-x{seeds}"
    result = run_replicate(parsed, seeds, folder, console=out, manifests=manifests)
    table = Table(title=f"{parsed.name}: {seeds} seeds (mean [95% t-interval])")
    table.add_column("figure", overflow="fold")
    table.add_column("mean [95%]", justify="right")
    for key, fig in result.figures.items():
        table.add_row(key, f"{fig.mean:.3f} [{fig.low:.3f}, {fig.high:.3f}]")
    out.print(table)
    out.print(f"written: {folder / 'replicate.json'}, {folder / 'replicate.csv'}, {folder / 'replicate_roc.png'}")


def sweep(
    file: Path = typer.Argument(..., help="sweep YAML file (base scenario + parameter values)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default: runs/NAME)"),
) -> None:
    """Run a base scenario over parameter values; write sweep.csv and a privacy-utility plot."""
    from fedmia.sweep import load_sweep, run_sweep

    try:
        spec, points = load_sweep(file)
    except ScenarioError as error:
        for line in error.lines():
            typer.echo(line, err=True)
        raise typer.Exit(USAGE_ERROR)
    if any(point.data.multi_site for _, point in points):
        typer.echo(f"{file}: data.sites: a sweep tabulates membership figures, which a multi-site run has only "
                   "after `fedmia evaluate --manifests`; run each point with `fedmia replicate --manifests`", err=True)
        raise typer.Exit(USAGE_ERROR)
    folder = out_dir or Path("runs") / spec.name
    rows = [point.csv_row() for point in run_sweep(file, folder, console=out)]
    from rich.table import Table

    table = Table(title=f"sweep {spec.name}")
    columns = ["label", "dice", "epsilon"] + [k for k in rows[0] if k.endswith((".auc", ".tpr@1%"))]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c)) for c in columns))
    out.print(table)
    out.print(f"written: {folder / 'sweep.csv'}, {folder / 'privacy_utility.png'}")


def evaluate(
    run_dir: Path = typer.Argument(..., help="a multi-site run folder"),
    manifests: Path = typer.Option(..., "--manifests", help="folder holding one manifest per site"),
) -> None:
    """Membership figures of a multi-site run: join its saved scores with the sites' manifests."""
    from fedmia.data.sites import ManifestError
    from fedmia.evaluation import summary_table
    from fedmia.evaluation.compare import RunFolderError
    from fedmia.evaluation.manifests import evaluate_with_manifests

    saved = run_dir / "scenario.yaml"
    if not saved.is_file():
        typer.echo(f"{run_dir}: not a fedmia run folder (no scenario.yaml in it)", err=True)
        raise typer.Exit(USAGE_ERROR)
    try:
        # the run's own record of its scenario, as it ran (validated when the run started; a
        # user's app counts its SuperNodes as clients): its schema, not today's plan checks
        from fedmia.evaluation.run import load_run

        metrics = evaluate_with_manifests(load_run(run_dir).scenario, run_dir, manifests)
    except ScenarioError as error:
        for line in error.lines():
            typer.echo(line, err=True)
        raise typer.Exit(USAGE_ERROR)
    except (RunFolderError, ManifestError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    out.print(summary_table(metrics.as_json()))
    out.print(f"written: {run_dir / 'metrics.json'}, {run_dir / 'ledger.json'}, {run_dir / 'report.md'}")


def audit(
    scenario: Path = typer.Argument(..., help="scenario YAML file: your data, model, federation and defenses"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="independent federations per setting (seed, seed+1, ...)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="audit folder (default: runs/NAME-audit)"),
    gate: Optional[Path] = typer.Option(None, "--gate", help="release gate YAML: THREAT-MODEL or all: {METRIC: CEILING}"),
    gate_on: str = typer.Option("upper", "--gate-on", click_type=click.Choice(["upper", "point"]),
                                help="judge the upper end of the 95% interval across seeds (default) or the mean"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="write the gate's verdicts as JUnit XML here"),
    what_if: Optional[Path] = typer.Option(None, "--what-if", help="YAML list of {label, defenses}: extra rows, "
                                           "each replacing the scenario's defenses"),
    pdf: bool = typer.Option(False, "--pdf", help="also audit.pdf, by headless Chromium when it is installed"),
    manifests: Optional[Path] = typer.Option(None, "--manifests", help="a multi-site scenario: the sites' "
                                             "manifests (`fedmia manifest`), its ground truth"),
    app_dir: Optional[Path] = typer.Option(None, "--app", help="audit your Flower app: its ClientApp, unchanged, "
                                           "under each threat model's server (docs/flower-app.md)"),
    run_config: List[str] = typer.Option([], "--run-config", help="with --app: KEY=VALUE over the app's "
                                         "[tool.flwr.app.config]"),
    supernodes: Optional[int] = typer.Option(None, "--supernodes", min=1, help="with --app: the app's clients"),
) -> None:
    """Audit a federation against every threat model; write audit.html (one self-contained report) and audit.json; with --gate, exit 1 when a ceiling is exceeded."""
    import shlex

    parsed = load_or_exit(scenario)
    check_data_or_exit(scenario, parsed, sites_here=parsed.data.multi_site)
    if parsed.data.multi_site and manifests is None:
        typer.echo(f"{scenario}: data.sites: a multi-site scenario's membership comes from its sites' manifests: "
                   "give --manifests DIR", err=True)
        raise typer.Exit(USAGE_ERROR)
    runs = None
    if app_dir is not None:
        from fedmia.audit_app import AppError, AppRuns, prepare_app

        try:
            found, _, _ = prepare_app(app_dir, parsed, run_config)
        except (AppError, ValueError) as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(USAGE_ERROR)
        runs = AppRuns(found.folder, tuple(run_config), supernodes, manifests)
    from fedmia.audit import load_gate, load_what_if, run_audit

    try:
        ceilings = load_gate(gate, parsed) if gate is not None else None
        extra = load_what_if(what_if) if what_if is not None else []
    except ScenarioError as error:
        for line in error.lines():
            typer.echo(line, err=True)
        raise typer.Exit(USAGE_ERROR)
    folder = out_dir or Path("runs") / f"{parsed.name}-audit"
    words = ["fedmia", "audit", str(scenario), "--seeds", str(seeds), "--out", str(folder)]
    for flag, value in (("--gate", gate), ("--what-if", what_if), ("--junit", junit), ("--manifests", manifests),
                        ("--app", app_dir), ("--supernodes", supernodes)):
        if value is not None:
            words += [flag, str(value)]
    for word in run_config:
        words += ["--run-config", word]
    words += (["--gate-on", gate_on] if gate_on != "upper" else []) + (["--pdf"] if pdf else [])
    result = run_audit(parsed, source=str(scenario), seeds=seeds, out_dir=folder, gate=ceilings, gate_on=gate_on,
                       what_if=extra, junit=junit, pdf=pdf, command=shlex.join(words), console=out,
                       manifests=manifests, runs=runs)
    for row in result.rows:
        if row.defense != "scenario":
            continue
        if not row.applies:
            out.print(f"{row.threat_model}: does not apply ({row.why_not})")
        elif row.strongest:
            auc = row.best.auc
            out.print(f"{row.threat_model}: strongest {row.strongest}, AUC {auc.mean:.3f}"
                      + (f" [{auc.low:.3f}, {auc.high:.3f}]" if auc.high is not None else ""))
    if ceilings is not None:
        from fedmia.audit.verdict import on_words

        on = on_words(gate_on, seeds)
        for v in result.verdicts:
            value = f" = {v.value:.4f} ({v.attack})" if v.value is not None else ""
            out.print(f"gate {v.threat_model}: {v.metric}{value} ceiling {v.ceiling:g}: {v.status}")
        out.print(f"gate: {'FAIL' if result.gate_failed else 'PASS'} (judged on the {on})")
    out.print(f"runs: {result.counts['trained']} trained, {result.counts['reused']} reused")
    if result.pdf_note:
        out.print(result.pdf_note)
    out.print(f"written: {result.html}, {result.out_dir / 'audit.json'}" + (f", {junit}" if junit else ""))
    if result.gate_failed:
        raise typer.Exit(1)
