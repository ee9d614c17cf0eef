"""`fedmia` command line: init, validate, run, audit, audit-model, audit-app, compare, replicate,
sweep, deploy-local, deploy, manifest, evaluate, credentials, schema, describe, list (`fedmia
--help`). Each command lives in `runs`, `apps`, `deployment` or `plugins`; all are registered below, in the order
`fedmia --help` lists them.

Scenario problems print as `FILE: key.path: message` on stderr and exit with code 2 — never a
traceback — so a typo costs seconds, not a failed overnight run.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from fedmia.cli import apps, deployment, plugins, runs
from fedmia.cli.common import USAGE_ERROR
from fedmia.scenario import ScenarioError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode="markdown",  # a docstring's line breaks are not the help text's
                  help="Audit membership leakage in federated segmentation under an adversarial server.")


def _version(value: bool) -> None:
    if value:
        from fedmia.runfolder import versions

        typer.echo(" ".join(f"{name} {version}" for name, version in versions().items() if version))
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print fedmia's version and its key libraries', then exit.")) -> None:
    """Audit membership leakage in federated segmentation under an adversarial server."""


# the commands, in the order `fedmia --help` lists them
app.command()(runs.init)
app.command()(runs.validate)
app.command()(runs.run)
app.command("audit-model")(runs.audit_model)
app.command("audit-app")(apps.audit_app)
app.command()(runs.compare)
app.command()(runs.replicate)
app.command()(runs.sweep)
app.command("deploy-local")(deployment.deploy_local)
app.command()(deployment.manifest)
app.command()(runs.evaluate)
app.command()(deployment.deploy)
app.command()(deployment.credentials)
app.command()(runs.audit)
app.command()(plugins.schema)
app.command()(plugins.describe)
app.command("list")(plugins.list_components)


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
