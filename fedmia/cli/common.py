"""What every command module shares: the console, the usage-error exit code, and the checks
that turn a bad scenario, folder or dataset into one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from fedmia.scenario import ScenarioError
from fedmia.validation import load_scenario

out = Console()


USAGE_ERROR = 2


def load_or_exit(path: Path):
    try:
        return load_scenario(path)
    except ScenarioError as error:
        for line in error.lines():
            typer.echo(line, err=True)  # plain text: one problem per line, never re-wrapped
        raise typer.Exit(USAGE_ERROR)


def folder_or_exit(check, *args, **kwargs):
    """A run-folder check (`fedmia.runfolder`) whose refusal is a usage error: its one line, exit 2."""
    from fedmia.runfolder import RunFolderError

    try:
        return check(*args, **kwargs)
    except RunFolderError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(USAGE_ERROR)


def check_data_or_exit(path: Path, parsed, *, sites_here: bool = False) -> None:
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


def print_audited_run(metrics, folder: Path, manifests: Path | None, whose: str) -> None:
    """The summary of a run audited outside `fedmia run` (a trained model, a user's app), and
    how to get its membership figures when no manifests were given."""
    from fedmia.evaluation import summary_table

    out.print(summary_table(metrics.as_json()))
    pending = "" if manifests is not None else (f" — membership pending: `fedmia evaluate {folder} --manifests DIR` "
                                                f"with {whose}")
    out.print(f"run folder: {folder}  (report: {folder / 'report.md'}){pending}")
