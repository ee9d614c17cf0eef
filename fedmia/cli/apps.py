"""`fedmia audit-app`: a user's own Flower app under fedmia's server (fedmia/audit_app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fedmia.cli.common import USAGE_ERROR, load_or_exit, print_audited_run
from fedmia.scenario import ScenarioError


def audit_app(
    app_dir: Path = typer.Argument(..., help="the Flower app's folder (its pyproject.toml names the ClientApp)"),
    scenario: Path = typer.Argument(..., help="scenario YAML: the server strategy and attacks, the app's network "
                                    "(model: {family: module, factory: ...}), data.sites and data.auditor"),
    run_config: List[str] = typer.Option([], "--run-config", help="KEY=VALUE over the app's "
                                         "[tool.flwr.app.config] (TOML values, as `flwr run --run-config`)"),
    supernodes: Optional[int] = typer.Option(None, "--supernodes", min=1, help="the app's clients (default: its "
                                             "local simulation's num-supernodes, else federation.clients)"),
    manifests: Optional[Path] = typer.Option(None, "--manifests", help="the sites' manifests (`fedmia manifest`): "
                                             "membership figures at once"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/NAME)"),
    force: bool = typer.Option(False, "--force", help="a run folder that holds a run: move that run aside first"),
) -> None:
    """Run your Flower app's ClientApp, unchanged, under fedmia's (malicious) ServerApp in Flower's simulation; attack and report it like a federation of fedmia's own."""
    from fedmia.audit_app import AppError, audit_app as run_app
    from fedmia.data.sites import ManifestError
    from fedmia.runfolder import RunFolderError

    parsed = load_or_exit(scenario)
    folder = out_dir or Path("runs") / parsed.name
    try:
        metrics = run_app(app_dir, parsed, folder, run_config=run_config, supernodes=supernodes,
                          manifests=manifests, force=force)
    except (AppError, ScenarioError, RunFolderError, ManifestError, ValueError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)
    print_audited_run(metrics, folder, manifests, "the sites' manifests")
