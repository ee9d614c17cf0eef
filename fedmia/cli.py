"""`fedmia` command line: init, validate, run, audit, audit-model, compare, replicate, sweep,
deploy-local, deploy, manifest, evaluate, credentials, schema, describe, list (`fedmia --help`).

Scenario problems print as `FILE: key.path: message` on stderr and exit with code 2 — never a
traceback — so a typo costs seconds, not a failed overnight run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console

from fedmia.io import process_age
from fedmia.stopping import resume_with
from fedmia.scenario import ScenarioError, parse_schema, read_yaml
from fedmia.validation import load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode="markdown",  # a docstring's line breaks are not the help text's
                  help="Audit membership leakage in federated segmentation under an adversarial server.")
out = Console()


def _version(value: bool) -> None:
    if value:
        from fedmia.runfolder import versions

        typer.echo(" ".join(f"{name} {version}" for name, version in versions().items() if version))
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print fedmia's version and its key libraries', then exit.")) -> None:
    """Audit membership leakage in federated segmentation under an adversarial server."""

USAGE_ERROR = 2


def _load_or_exit(path: Path):
    try:
        return load_scenario(path)
    except ScenarioError as error:
        for line in error.lines():
            typer.echo(line, err=True)  # plain text: one problem per line, never re-wrapped
        raise typer.Exit(USAGE_ERROR)


def _folder_or_exit(check, *args, **kwargs):
    """A run-folder check (`fedmia.runfolder`) whose refusal is a usage error: its one line, exit 2."""
    from fedmia.runfolder import RunFolderError

    try:
        return check(*args, **kwargs)
    except RunFolderError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)


def _check_data_or_exit(path: Path, parsed, *, sites_here: bool = False) -> None:
    """Build the federation plan (reads a folder dataset, generates embedded ones); with
    `sites_here`, also every multi-site site's folder, which must be on this machine (a
    simulated or loopback audit)."""
    from fedmia.data.plan import build_plan
    from fedmia.data.sites import check_site_folders

    where = "data"
    try:
        plan = build_plan(parsed)
        if parsed.model.init is not None:  # the checkpoint against the data's channels and classes
            from fedmia.models import scenario_model

            where = "model"
            scenario_model(parsed, plan.info)
            where = "data"
        if sites_here:
            where = "data.sites"
            check_site_folders(parsed)
    except ValueError as error:
        typer.echo(f"{path}: {where}: {error}", err=True)
        raise typer.Exit(USAGE_ERROR)


@app.command()
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


@app.command()
def validate(scenario: Path = typer.Argument(..., help="scenario YAML file")) -> None:
    """Check a scenario file without running it."""
    parsed = _load_or_exit(scenario)
    _check_data_or_exit(scenario, parsed)
    out.print(f"{scenario}: ok ({parsed.name}: {parsed.federation.clients} clients, "
              f"{parsed.federation.rounds} rounds, attacks: {', '.join(parsed.attack_names)})")


@app.command()
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
        _folder_or_exit(check_claim, out_dir, force=force)  # before anything starts
    parsed = _validate_while_ray_starts(scenario, verbose, folder=resume or out_dir, force=force)
    from fedmia.evaluation import summary_table
    from fedmia.runner import run_scenario

    folder = resume or out_dir or Path("runs") / parsed.name
    resume_with(f"the rounds done so far are kept: fedmia run --resume {folder}")
    # the clock starts with the process: imports and start-up are part of what the user waits
    launched = time.perf_counter() - (process_age() or 0.0)
    metrics = run_scenario(parsed, folder, console=out, verbose=verbose, resume=resume is not None,
                           started=launched, force=force)
    out.print(summary_table(metrics))
    out.print(f"run folder: {folder}  (report: {folder / 'report.md'}, "
              f"wall {metrics['timing']['wall_s']:.1f} s)")


@app.command("audit-model")
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
    from fedmia.evaluation import summary_table
    from fedmia.runner import audit_trained_model

    from fedmia.data.sites import ManifestError
    from fedmia.runfolder import RunFolderError

    parsed = _load_or_exit(scenario)
    folder = out_dir or Path("runs") / parsed.name
    try:
        metrics = audit_trained_model(parsed, checkpoint, folder, manifests=manifests, console=out, force=force)
    except (ScenarioError, RunFolderError, ManifestError) as error:  # a checkpoint that does not fit, ...
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    out.print(summary_table(metrics))
    pending = "" if manifests is not None else (" — membership pending: `fedmia evaluate "
                                                f"{folder} --manifests DIR` with the training records' manifests")
    out.print(f"run folder: {folder}  (report: {folder / 'report.md'}){pending}")


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
        parsed = _load_or_exit(path)
        _check_data_or_exit(path, parsed, sites_here=True)  # before any file is written
        return parsed

    try:
        schema = parse_schema(read_yaml(path), str(path))
    except ScenarioError:
        schema = None  # _load_or_exit reports it
    if schema is not None and folder is None:
        _folder_or_exit(check_claim, Path("runs") / schema.name, force=force)
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
        _folder_or_exit(check_claim, folder, resume=True)
        if scenario is not None and _load_or_exit(scenario).canonical() != _load_or_exit(saved).canonical():
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


@app.command()
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


@app.command()
def replicate(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    seeds: int = typer.Option(3, "--seeds", min=2, help="independent federations (seed, seed+1, ...)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="replication folder (default: runs/NAME-xSEEDS)"),
    manifests: Optional[Path] = typer.Option(None, "--manifests", help="a multi-site scenario: the sites' manifests"),
) -> None:
    """Run a scenario over N seeds; mean and 95% interval across seeds for every figure."""
    parsed = _load_or_exit(scenario)
    _check_data_or_exit(scenario, parsed, sites_here=True)
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
    for key, row in result["figures"].items():
        table.add_row(key, f"{row['mean']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]")
    out.print(table)
    out.print(f"written: {folder / 'replicate.json'}, {folder / 'replicate.csv'}, {folder / 'replicate_roc.png'}")


@app.command()
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
    rows = run_sweep(file, folder, console=out)
    from rich.table import Table

    table = Table(title=f"sweep {spec.name}")
    columns = ["label", "dice", "epsilon"] + [k for k in rows[0] if k.endswith((".auc", ".tpr@1%"))]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c)) for c in columns))
    out.print(table)
    out.print(f"written: {folder / 'sweep.csv'}, {folder / 'privacy_utility.png'}")


@app.command("deploy-local")
def deploy_local(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/NAME)"),
    workdir: Path = typer.Option(Path("runs/deploy"), "--workdir", help="logs, SuperLink database, FLWR_HOME"),
    tls: bool = typer.Option(False, "--tls", help="TLS with a throw-away self-signed CA"),
    auth: bool = typer.Option(False, "--auth", help="SuperNode authentication (registered keys only; implies --tls)"),
    force: bool = typer.Option(False, "--force", help="a run folder that holds a run: move that run aside first"),
) -> None:
    """Run a scenario on Flower's deployment engine on this machine: a SuperLink and one
    SuperNode per client as separate processes (127.0.0.1 only), then `flwr run`."""
    from fedmia.deploy import local_deployment, self_signed_certificates, site_node_configs

    parsed = _load_or_exit(scenario)
    _check_data_or_exit(scenario, parsed, sites_here=True)
    folder = out_dir or Path("runs") / parsed.name
    _clear_for_deployment(folder, force)
    resume_with(f"every process it started was stopped; a deployment starts afresh: the same command with --force "
                f"moves the unfinished run in {folder} aside")
    certs = self_signed_certificates(workdir / "certs") if tls or auth else None
    # a multi-site scenario: each SuperNode gets its site's name and folder, as a hospital's would
    configs = site_node_configs(parsed) if parsed.data.multi_site else None
    with local_deployment(parsed.federation.clients, workdir, certs, auth, configs) as deployment:
        out.print(f"SuperLink on 127.0.0.1:{deployment.superlink_port}, {parsed.federation.clients} SuperNodes; "
                  f"logs in {workdir}")
        sent = parsed.with_absolute_paths(keep_site_paths=False)
        result = deployment.run(sent, folder)
    _finished_or_exit(result, folder, sent)


def _clear_for_deployment(folder: Path, force: bool) -> None:
    """The ServerApp claims the run folder on its own machine and refuses one holding a run: check
    here first (exit 2 before anything starts), and with --force move the old run aside."""
    from fedmia.runfolder import check_claim, move_aside

    if _folder_or_exit(check_claim, folder, force=force) in ("finished", "unfinished"):
        out.print(f"moved the run that was in {folder} to {move_aside(folder)}")


def _finished_or_exit(result, folder: Path, sent) -> None:
    """`flwr run` exits 0 even when the ServerApp failed: the run folder's completion record says
    whether *this* scenario's run finished."""
    from fedmia.runfolder import COMPLETION, finished_metrics

    metrics = finished_metrics(folder, sent)
    if result.returncode != 0 or metrics is None:
        typer.echo(result.stdout[-4000:] + result.stderr[-4000:], err=True)
        typer.echo(f"the run did not finish: no {folder / COMPLETION} for this scenario (Flower's output above)",
                   err=True)
        raise typer.Exit(1)
    from fedmia.evaluation import summary_table

    out.print(summary_table(metrics))
    out.print(f"run folder: {folder}" + ("  (membership: `fedmia evaluate` it with the sites' manifests)"
                                         if sent.data.multi_site else ""))


@app.command()
def manifest(
    folder: Path = typer.Argument(..., help="the site's own data folder (images/ and masks/)"),
    site: str = typer.Option(..., "--site", help="the site's name, as in the scenario's data.sites"),
    out_file: Path = typer.Option(..., "--out", help="manifest file to write (JSON)"),
    images: str = typer.Option("images", "--images", help="images subfolder"),
    masks: str = typer.Option("masks", "--masks", help="masks subfolder"),
) -> None:
    """Run at a site: the SHA-256 digest of every record its client trains on (no image, no
    file name) — the ground truth an auditor joins with a run by `fedmia evaluate`."""
    from fedmia.data.sites import write_manifest

    try:
        written = write_manifest(folder, site, out_file, images, masks)
    except ValueError as error:
        typer.echo(f"{folder}: {error}", err=True)
        raise typer.Exit(USAGE_ERROR)
    out.print(f"{out_file}: {len(written['records'])} records of site {site}")


@app.command()
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
        metrics = evaluate_with_manifests(_load_or_exit(saved), run_dir, manifests)
    except (RunFolderError, ManifestError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    out.print(summary_table(metrics))
    out.print(f"written: {run_dir / 'metrics.json'}, {run_dir / 'ledger.json'}, {run_dir / 'report.md'}")


@app.command()
def deploy(
    scenario: Path = typer.Argument(..., help="scenario YAML file (a multi-site one: data.sites)"),
    superlink: str = typer.Option(..., "--superlink", help="the SuperLink's Control API, HOST:PORT (9093 by default)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder, on the SuperLink's machine (default: runs/NAME)"),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates", help="CA certificate of a TLS SuperLink"),
    insecure: bool = typer.Option(False, "--insecure", help="plain-text connection (testing only)"),
    force: bool = typer.Option(False, "--force", help="a run folder that holds a run: move that run aside first"),
) -> None:
    """The auditor's side of a multi-site audit: submit the scenario to a running SuperLink
    (`flwr run`) whose SuperNodes are the sites, and wait for the run folder."""
    from fedmia.deploy import submit

    parsed = _load_or_exit(scenario)
    if (root_certificates is None) == (not insecure):
        typer.echo("fedmia deploy: give --root-certificates CA_FILE (TLS) or --insecure", err=True)
        raise typer.Exit(USAGE_ERROR)
    _check_data_or_exit(scenario, parsed)  # the auditor's own folders, before anything is sent
    folder = out_dir or Path("runs") / parsed.name
    _clear_for_deployment(folder, force)
    resume_with(f"every process it started was stopped; a deployment starts afresh: the same command with --force "
                f"moves the unfinished run in {folder} aside")
    sent = parsed.with_absolute_paths(keep_site_paths=False)
    result = submit(sent, folder, superlink, root_certificates)
    _finished_or_exit(result, folder, sent)


@app.command()
def credentials(
    folder: Path = typer.Argument(..., help="where to write them"),
    site: list[str] = typer.Option(..., "--site", help="a site's name (repeat per site): one key pair each"),
    host: list[str] = typer.Option(["127.0.0.1", "localhost"], "--host", help="the SuperLink's address(es) "
                                   "its certificate is valid for (repeatable)"),
    days: int = typer.Option(30, "--days", min=1, help="validity"),
) -> None:
    """A throw-away CA, the SuperLink's TLS certificate and each site's SuperNode key pair (for
    demos and docker/compose.yml; a real federation's operators bring their own)."""
    from fedmia.deploy import write_credentials

    write_credentials(folder, site, tuple(host), days)
    out.print(f"{folder}: ca.crt, server.pem, server.key; keys/ for {', '.join(site)}")


@app.command()
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
) -> None:
    """Audit a federation against every threat model; write audit.html (one self-contained report) and audit.json; with --gate, exit 1 when a ceiling is exceeded."""
    import shlex

    parsed = _load_or_exit(scenario)
    _check_data_or_exit(scenario, parsed)
    if parsed.data.multi_site:
        typer.echo(f"{scenario}: data.sites: a multi-site scenario is audited with fedmia deploy and fedmia "
                   "evaluate; expected a single-pool scenario", err=True)
        raise typer.Exit(USAGE_ERROR)
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
    for flag, value in (("--gate", gate), ("--what-if", what_if), ("--junit", junit)):
        if value is not None:
            words += [flag, str(value)]
    words += (["--gate-on", gate_on] if gate_on != "upper" else []) + (["--pdf"] if pdf else [])
    result = run_audit(parsed, source=str(scenario), seeds=seeds, out_dir=folder, gate=ceilings, gate_on=gate_on,
                       what_if=extra, junit=junit, pdf=pdf, command=shlex.join(words), console=out)
    for row in result.rows:
        if row["defense"] != "scenario":
            continue
        if not row["applies"]:
            out.print(f"{row['threat_model']}: does not apply ({row['why_not']})")
        elif row["strongest"]:
            auc = row["attacks"][row["strongest"]]["auc"]
            out.print(f"{row['threat_model']}: strongest {row['strongest']}, AUC {auc['mean']:.3f}"
                      + (f" [{auc['low']:.3f}, {auc['high']:.3f}]" if auc["high"] is not None else ""))
    if ceilings is not None:
        from fedmia.audit.verdict import on_words

        on = on_words(gate_on, seeds)
        for v in result.verdicts:
            value = f" = {v['value']:.4f} ({v['attack']})" if "value" in v else ""
            out.print(f"gate {v['threat_model']}: {v['metric']}{value} ceiling {v['ceiling']:g}: {v['status']}")
        out.print(f"gate: {'FAIL' if result.gate_failed else 'PASS'} (judged on the {on})")
    out.print(f"runs: {result.counts['trained']} trained, {result.counts['reused']} reused")
    if result.pdf_note:
        out.print(result.pdf_note)
    out.print(f"written: {result.html}, {result.out_dir / 'audit.json'}" + (f", {junit}" if junit else ""))
    if result.gate_failed:
        raise typer.Exit(1)


@app.command()
def schema(out_file: Optional[Path] = typer.Option(None, "--out", help="write it to this file (default: print it)")) -> None:
    """Write the scenario's JSON Schema, for editors that complete and check scenario keys."""
    import json

    from fedmia.io import write_text_atomic
    from fedmia.scenario import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out_file is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(out_file, text)
        typer.echo(f"wrote {out_file}")


@app.command()
def describe(name: str = typer.Argument(..., help="a plug-in's name (`fedmia list`)")) -> None:
    """Show a plug-in's family, package, description and parameters (type, default, meaning)."""
    from fedmia.registry import FAMILIES, UnknownNameError, offered

    families = [(f.kind, f.group) for f in FAMILIES]
    found = [(kind, group) for kind, group in families if name in offered(group)]
    if not found:
        known = sorted({n for _, group in families for n in offered(group)})
        typer.echo(str(UnknownNameError("plug-in", name, known)), err=True)
        raise typer.Exit(USAGE_ERROR)
    from rich.table import Table

    from fedmia.plugins import plugin_parameters

    for kind, group in found:
        package, doc, params = plugin_parameters(group, name)
        out.print(f"[bold]{name}[/] — {kind} ({package})")
        if doc:
            from rich.markup import escape

            out.print(escape(doc))
        if params:
            table = Table(show_header=True, header_style="bold")
            for column in ("parameter", "type", "default", "meaning"):
                table.add_column(column, overflow="fold")
            from rich.markup import escape

            for row in params:  # escaped: "[lo, hi]" or "list[float]" is text, not rich markup
                table.add_row(*map(escape, row))
            out.print(table)
        else:
            out.print("[dim]no parameters[/]")


@app.command("list")
def list_components() -> None:
    """List the plug-ins on offer — datasets, partitioners, models, strategies, attacks, defenses, OOD sets, threat models — with the package of each, and smp's architectures."""
    from rich.markup import escape

    from fedmia.registry import FAMILIES, conflicts_of, entry_points_of, distribution_of, offered

    clashes = []
    for title, group in [(f.title, f.group) for f in FAMILIES]:
        points = entry_points_of(group)
        by_package: dict[str, list[str]] = {}
        for name in offered(group):  # metadata only: nothing is imported
            package = " ".join(distribution_of(points[name])) if name in points else "(registered in-process)"
            if name in conflicts_of(group):
                clashes.append((title, name, [" ".join(distribution_of(p)) for p in conflicts_of(group)[name]]))
                name = f"[red]{name} (CONFLICT)[/]"
            by_package.setdefault(package, []).append(name)
        listed = "; ".join(f"{', '.join(names)} [dim]({escape(package)})[/]" for package, names in by_package.items())
        out.print(f"[bold]{title}[/]: {listed}")
    for title, name, packages in clashes:
        out.print(f"[red]conflict[/]: {title} {name!r} is offered by {', '.join(packages)}; a scenario naming it "
                  "is refused until one is uninstalled or renamed")
    from fedmia.models import ARCHITECTURES

    out.print(f"[bold]architectures[/] (segmentation-models-pytorch): {', '.join(ARCHITECTURES)}")


def _report_fault(error: BaseException) -> int:
    """One line naming the culprit and an exit code: usage and data problems 2 (a run folder that
    cannot be used, a data file, a scenario), runtime faults 1. The traceback only with --verbose
    (or FEDMIA_VERBOSE=1)."""
    if "--verbose" in sys.argv or os.environ.get("FEDMIA_VERBOSE"):
        import traceback

        traceback.print_exception(error)
    if isinstance(error, ScenarioError):
        for line in error.lines():
            typer.echo(line, err=True)
        return USAGE_ERROR
    text = " ".join(str(error).split()) or type(error).__name__
    if getattr(error, "exit_code", None) == USAGE_ERROR:  # a run folder, a Ray address: usage problems
        typer.echo(text, err=True)
        return USAGE_ERROR
    hint = "" if "--verbose" in sys.argv else " (--verbose shows the traceback)"
    typer.echo(f"fedmia: {type(error).__name__}: {text}{hint}", err=True)
    return 1


def main() -> None:
    from fedmia.stopping import Stopped, stop_line, stop_on_signals, stop_what_is_left

    stop_on_signals()  # a stop: its line, what is left stopped by PID, then os._exit below
    try:
        # non-standalone, click hands back a command's exit code (typer.Exit(2) of a usage error)
        returned = app(standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except (KeyboardInterrupt, Stopped) as stop:  # Ctrl-C, SIGTERM, SIGHUP
        line, code = stop_line(stop)
        typer.echo(line, err=True)
        stop_what_is_left()
    except click.exceptions.Abort:
        typer.echo("Aborted!", err=True)
        code = 1
    except click.exceptions.ClickException as error:  # bad options: click's own message, exit 2
        error.show()
        code = error.exit_code
    except Exception as error:  # noqa: BLE001  (the one place that turns a fault into one line)
        code = _report_fault(error)
    # Every result is written (atomically) and closed by now, and Ray was stopped by the run.
    # What is left is tearing down the interpreter's heap (torch, the plan: 1-2 s measured),
    # which the user would wait for with nothing to show: skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
