"""The commands of a deployment on Flower's deployment engine: deploy-local, manifest, deploy,
credentials."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedmia.stopping import resume_with

from fedmia.cli.common import USAGE_ERROR, check_data_or_exit, folder_or_exit, load_or_exit, out


def deploy_local(
    scenario: Path = typer.Argument(..., help="scenario YAML file"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/NAME)"),
    workdir: Path = typer.Option(Path("runs/deploy"), "--workdir", help="logs, SuperLink database, FLWR_HOME"),
    tls: bool = typer.Option(False, "--tls", help="TLS with a throw-away self-signed CA"),
    auth: bool = typer.Option(False, "--auth", help="SuperNode authentication (registered keys only; implies --tls)"),
    force: bool = typer.Option(False, "--force", help="a run folder that holds a run: move that run aside first"),
    app_dir: Optional[Path] = typer.Option(None, "--app", help="your Flower app: its ClientApp, unchanged, on the "
                                           "SuperNodes under fedmia's ServerApp (docs/flower-app.md)"),
    run_config: List[str] = typer.Option([], "--run-config", help="with --app: KEY=VALUE over its config"),
    supernodes: Optional[int] = typer.Option(None, "--supernodes", min=1, help="with --app: the app's clients"),
) -> None:
    """Run a scenario on Flower's deployment engine on this machine: a SuperLink and one
    SuperNode per client as separate processes (127.0.0.1 only), then `flwr run`."""
    from fedmia.deploy import local_deployment, self_signed_certificates, site_node_configs

    parsed = load_or_exit(scenario)
    check_data_or_exit(scenario, parsed, sites_here=True)
    folder = out_dir or Path("runs") / parsed.name
    if app_dir is not None:
        return _deploy_app(parsed, app_dir, run_config, supernodes, folder, workdir, force)
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


def _deploy_app(parsed, app_dir: Path, run_config: list[str], supernodes: Optional[int], folder: Path,
                workdir: Path, force: bool) -> None:
    """A user's app on the loopback deployment: its folder composed with fedmia's ServerApp
    (`audit_app.compose_app`), one SuperNode per app client with Flower's partition-id and
    num-partitions, `flwr run` of the composed app with the app's own run config."""
    from fedmia.audit_app import AppError, app_clients, app_scenario, compose_app, prepare_app, toml_config
    from fedmia.deploy import local_deployment

    try:
        app, overrides, _ = prepare_app(app_dir, parsed, run_config)
    except (AppError, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    nodes = app_clients(app, supernodes, parsed)
    _clear_for_deployment(folder, force)
    resume_with(f"every process it started was stopped; the same command with --force moves the unfinished run in "
                f"{folder} aside")
    composed = compose_app(app, Path(workdir).resolve() / "app")
    sent = app_scenario(parsed.with_absolute_paths(), nodes)
    with local_deployment(nodes, workdir) as deployment:
        out.print(f"SuperLink on 127.0.0.1:{deployment.superlink_port}, {nodes} SuperNodes running app {app.name}; "
                  f"logs in {workdir}")
        result = deployment.run(sent, folder, app=composed,
                                extra=toml_config({**overrides, "client": app.description}))
    _finished_or_exit(result, folder, sent)


def _clear_for_deployment(folder: Path, force: bool) -> None:
    """The ServerApp claims the run folder on its own machine and refuses one holding a run: check
    here first (exit 2 before anything starts), and with --force move the old run aside."""
    from fedmia.runfolder import check_claim, move_aside

    if folder_or_exit(check_claim, folder, force=force) in ("finished", "unfinished"):
        out.print(f"moved the run that was in {folder} to {move_aside(folder)}")


def _finished_or_exit(result, folder: Path, sent) -> None:
    """`flwr run` exits 0 even when the ServerApp failed: the run folder's completion record says
    whether *this* scenario's run finished."""
    from fedmia.evaluation.run import finished_run
    from fedmia.runfolder import COMPLETION

    run = finished_run(folder, sent)
    if result.returncode != 0 or run is None:
        typer.echo(result.stdout[-4000:] + result.stderr[-4000:], err=True)
        typer.echo(f"the run did not finish: no {folder / COMPLETION} for this scenario (Flower's output above)",
                   err=True)
        raise typer.Exit(1)
    from fedmia.evaluation import summary_table

    out.print(summary_table(run.metrics.as_json()))
    out.print(f"run folder: {folder}" + ("  (membership: `fedmia evaluate` it with the sites' manifests)"
                                         if sent.data.multi_site else ""))


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

    parsed = load_or_exit(scenario)
    if (root_certificates is None) == (not insecure):
        typer.echo("fedmia deploy: give --root-certificates CA_FILE (TLS) or --insecure", err=True)
        raise typer.Exit(USAGE_ERROR)
    check_data_or_exit(scenario, parsed)  # the auditor's own folders, before anything is sent
    folder = out_dir or Path("runs") / parsed.name
    _clear_for_deployment(folder, force)
    resume_with(f"every process it started was stopped; a deployment starts afresh: the same command with --force "
                f"moves the unfinished run in {folder} aside")
    sent = parsed.with_absolute_paths(keep_site_paths=False)
    result = submit(sent, folder, superlink, root_certificates)
    _finished_or_exit(result, folder, sent)


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
