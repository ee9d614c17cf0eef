"""The commands that describe fedmia itself: schema, describe, list."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fedmia.cli.common import USAGE_ERROR, out


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
