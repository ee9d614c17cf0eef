"""The generated reference: pages written at build time from the code itself, so they cannot drift.

Registered in mkdocs.yml under `hooks:`. On every `mkdocs build` / `mkdocs serve`, `on_files`
adds three pages that exist only in the built site (nothing is written under docs/):

- `reference/scenario.md`: every scenario key, walked from the pydantic schema `fedmia.scenario.Scenario`;
- `reference/cli.md`: every `fedmia` command with its arguments and options, from the Typer app;
- `reference/plugins.md`: every registered dataset, attack, defense and strategy with its
  docstring and parameters (each plug-in's pydantic `Params`).

`scenario_json_schema()` is the JSON schema committed as docs/scenario.schema.json (editors use
it through the `# yaml-language-server: $schema=...` line of the shipped scenarios); regenerate it
with `python docs/hooks/reference.py schema > docs/scenario.schema.json`. tests/test_docs.py
checks that the committed file equals what the schema gives now.
"""

from __future__ import annotations

import enum
import inspect
import json
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel, RootModel
from pydantic_core import PydanticUndefined

PAGES = {
    "reference/scenario.md": "scenario_markdown",
    "reference/cli.md": "cli_markdown",
    "reference/plugins.md": "plugins_markdown",
}

GENERATED_NOTE = ("*Generated at build time by `docs/hooks/reference.py` from the code; "
                  "edit the code, not this page.*\n")


# ---------------------------------------------------------------- types, defaults, constraints
def _type_name(annotation: Any) -> str:
    """A short, readable form of a type annotation: `int | None`, `list[float]`, `'iid' | 'dirichlet'`."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:  # a factory taking the validated data
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        if isinstance(value, RootModel):
            value = value.root
        else:
            return "(see below)"
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        value = [v.model_dump(exclude_defaults=True) for v in value]
        value = [next(iter(v.values())) if len(v) == 1 else v for v in value]
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{json.dumps(value)}`" if _jsonable(value) else f"`{value!r}`"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


_CONSTRAINTS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "multiple_of": "multiple of",
                "min_length": "min length", "max_length": "max length", "pattern": "pattern"}


def _constraints(field) -> str:
    found = []
    for item in field.metadata:
        for attr, symbol in _CONSTRAINTS.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{symbol} `{value}`" if attr == "pattern" else f"{symbol} {value}")
    return ", ".join(found)


def _models_in(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """Pydantic models nested in an annotation, each with whether it sits in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    origin = typing.get_origin(annotation)
    found = []
    for arg in typing.get_args(annotation):
        for model, in_list in _models_in(arg):
            found.append((model, in_list or origin in (list, tuple, set)))
    return found


def _cell(text: str) -> str:
    """Text for a table cell: one line, `|` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """A table cell of prose: also `<name>` shown as text, not taken for an HTML tag."""
    return _cell(text).replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------- scenario keys
def scenario_fields(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, Any, type]]:
    """(dotted key, pydantic FieldInfo, owning model) of every field of the scenario schema,
    depth first; a list of models is written `key[]` (`faults.crash[].round`)."""
    if model is None:
        from fedmia.scenario import Scenario

        model = Scenario
    out = []
    for name, field in model.model_fields.items():
        if issubclass(model, RootModel) and name == "root":
            continue
        key = f"{prefix}{name}"
        out.append((key, field, model))
        for sub, in_list in _models_in(field.annotation):
            if issubclass(sub, RootModel):
                continue
            out += scenario_fields(sub, f"{key}[]." if in_list else f"{key}.")
    return out


def scenario_keys() -> list[str]:
    return [key for key, _, _ in scenario_fields()]


def _own_doc(obj: Any) -> str:
    """The object's own docstring (not one inherited from pydantic's BaseModel or a base class)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if doc else ""


def _model_note(model: type[BaseModel]) -> str:
    return " ".join(_own_doc(model).split())


def scenario_markdown() -> str:
    from fedmia.scenario import Scenario

    lines = [
        "# Scenario keys", "", GENERATED_NOTE,
        "A scenario is one YAML file. Every key below has a default unless it says *required*; an "
        "unknown key is an error. `fedmia validate FILE` checks a file without running it. "
        "Keys of the plug-ins' own blocks (an attack's, a strategy's, a defense's parameters) are in "
        "[Plug-ins](plugins.md). The same schema as JSON Schema: "
        "[scenario.schema.json](../scenario.schema.json).", "",
    ]
    sections: dict[str, list] = {}
    for key, field, owner in scenario_fields(Scenario):
        head = key.split(".")[0].removesuffix("[]") if "." in key else ""
        sections.setdefault(head, []).append((key, field, owner))
    for head, rows in sections.items():
        lines.append(f"## `{head}`" if head else "## Top level")
        lines.append("")
        if head:
            field = Scenario.model_fields[head]
            if field.description:
                lines += [_cell(field.description) + ".", ""]
        notes = []
        for _, _, owner in rows:
            note = _model_note(owner)
            if owner is not Scenario and note and note not in notes:
                notes.append(note)
        lines += [f"> {note}\n" for note in notes]
        lines += ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
        for key, field, _ in rows:
            if not head and key != "name" and key in sections:
                continue  # a block: described in its own section
            lines.append(f"| `{key}` | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} | "
                         f"{_cell(_constraints(field))} | {_prose(field.description or '')} |")
        extras = [o for o in {id(o): o for _, _, o in rows}.values() if o.model_config.get("extra") == "allow"]
        for owner in extras:
            anchor = {"attacks": "attacks", "server": "strategies"}.get(head, "")
            lines += ["", f"Any other key here is a parameter of the plug-in it names "
                      f"(see [Plug-ins](plugins.md{'#' + anchor if anchor else ''}))."]
        lines.append("")
    lines += [
        "## `defenses`", "",
        "A mapping from a registered defense key to its block (`true` for the defaults, `false` or "
        "absent for off); each block is validated against that defense's `Params`, listed in "
        "[Plug-ins](plugins.md#defenses).", "",
    ]
    return "\n".join(lines)


def scenario_json_schema() -> dict:
    """The scenario's JSON Schema, as `fedmia schema` writes it (fedmia.scenario.json_schema)."""
    from fedmia.scenario import json_schema

    return json_schema()


def schema_text() -> str:
    return json.dumps(scenario_json_schema(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- CLI
def cli_commands() -> dict[str, Any]:
    """Each `fedmia` subcommand's click command, by name."""
    import typer

    from fedmia.cli import app

    group = typer.main.get_command(app)
    return dict(sorted(group.commands.items()))


def _argument_helps() -> dict[tuple[str, str], str]:
    """(command, parameter) → help of Typer arguments, read from the command functions: the click
    command Typer builds does not keep an argument's help."""
    import typer

    from fedmia.cli import app

    helps = {}
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        for param, spec in inspect.signature(info.callback).parameters.items():
            if isinstance(spec.default, typer.models.ArgumentInfo) and spec.default.help:
                helps[(name, param)] = spec.default.help
    return helps


def _param_row(param, help_text: str | None = None) -> str:
    import click

    if isinstance(param, click.Argument):
        name = f"`{param.human_readable_name}`"
        kind = "argument" + ("" if param.required else ", optional") + (", repeatable" if param.nargs == -1 else "")
    else:
        name = ", ".join(f"`{o}`" for o in param.opts + param.secondary_opts)
        kind = "flag" if param.is_flag else f"option ({param.type.name})"
        if param.multiple:
            kind += ", repeatable"
        if param.required:
            kind += ", required"
    default = param.default
    if callable(default) or default in (None, (), []) or param.required:
        shown = ""
    elif isinstance(default, (list, tuple)):
        shown = f"`{' '.join(map(str, default))}`"
    else:
        shown = f"`{default}`"
    return f"| {name} | {kind} | {_cell(shown)} | {_prose(help_text or getattr(param, 'help', None) or '')} |"


def cli_markdown() -> str:
    import click

    lines = ["# Command line", "", GENERATED_NOTE,
             "`fedmia COMMAND --help` prints the same. A scenario problem exits with code 2 and one "
             "line per problem (`FILE: key.path: what was expected, what was found`); see "
             "[Troubleshooting](../troubleshooting.md).", ""]
    helps = _argument_helps()
    for name, command in cli_commands().items():
        ctx = click.Context(command, info_name=f"fedmia {name}")
        lines += [f"## `fedmia {name}`", "", "```", " ".join(command.collect_usage_pieces(ctx)).join(
            [f"fedmia {name} ", ""]), "```", ""]
        lines += [inspect.cleandoc(command.help or ""), ""]
        params = [p for p in command.params if p.name != "help"]
        if params:
            lines += ["| argument / option | kind | default | help |", "|---|---|---|---|"]
            lines += [_param_row(p, helps.get((name, p.name))) for p in params]
            lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- plug-ins
def _params_table(model: type[BaseModel] | None) -> list[str]:
    if model is None or not model.model_fields:
        return ["No parameters.", ""]
    lines = ["| parameter | type | default | constraints | description |", "|---|---|---|---|---|"]
    for key, field in model.model_fields.items():
        lines.append(f"| `{key}` | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} | "
                     f"{_cell(_constraints(field))} | {_prose(field.description or '')} |")
    return lines + [""]


def _doc(obj: Any) -> str:
    """The plug-in's own docstring, else its module's."""
    doc = _own_doc(obj)
    if not doc:
        module = inspect.getmodule(obj)
        doc = inspect.getdoc(module) if module is not None else ""
    return doc or ""


def registered() -> dict[str, dict[str, Any]]:
    """Every registered plug-in, by family and name: the object the registry holds."""
    import strategies
    from fedmia.attacks import ATTACKS
    from fedmia.data.datasets import DATASETS
    from fedmia.data.ood import OOD_SETS
    from fedmia.data.partition import PARTITIONERS
    from fedmia.defenses import DEFENSES

    return {
        "datasets": {name: DATASETS.get(name) for name in DATASETS.names()},
        "partitioners": {name: PARTITIONERS.get(name) for name in PARTITIONERS.names()},
        "ood sets": {name: OOD_SETS.get(name) for name in OOD_SETS.names()},
        "attacks": {name: ATTACKS.get(name) for name in ATTACKS.names()},
        "defenses": {name: DEFENSES.get(name) for name in DEFENSES.names()},
        "strategies": {name: strategies.STRATEGIES.get(name) for name in strategies.STRATEGIES.names()},
    }


def _registries() -> dict[str, Any]:
    import strategies
    from fedmia.attacks import ATTACKS
    from fedmia.data.datasets import DATASETS
    from fedmia.data.ood import OOD_SETS
    from fedmia.data.partition import PARTITIONERS
    from fedmia.defenses import DEFENSES

    return {"datasets": DATASETS, "attacks": ATTACKS, "defenses": DEFENSES, "strategies": strategies.STRATEGIES,
            "partitioners": PARTITIONERS, "ood sets": OOD_SETS}


def _package_line(family: str, name: str) -> list[str]:
    """"Offered by: PACKAGE VERSION" where the registry knows it (entry points' metadata)."""
    registry = _registries()[family]
    if not hasattr(registry, "package"):
        return []
    package, version = registry.package(name)
    return [f"Offered by: `{package}` {version}".rstrip() + ".", ""]


def params_models() -> dict[str, type[BaseModel]]:
    """`family name` → the plug-in's parameter model, for every dataset (that declares one),
    attack, defense and strategy."""
    plugins = registered()
    out: dict[str, type[BaseModel]] = {}
    for name, loader in plugins["datasets"].items():
        if getattr(loader, "Params", None) is not None:
            out[f"dataset {name}"] = loader.Params
    for name, cls in plugins["attacks"].items():
        out[f"attack {name}"] = cls.Params
    for name, cls in plugins["defenses"].items():
        out[f"defense {name}"] = cls.Params
    for name, entry in plugins["strategies"].items():
        out[f"strategy {name}"] = entry.Params
    return out


def plugins_markdown() -> str:
    plugins = registered()
    lines = ["# Registered plug-ins", "", GENERATED_NOTE,
             "What `fedmia list` names, with each plug-in's documentation and parameters. How to write "
             "one: [Writing plug-ins](../plugins.md).", ""]

    lines += ["## Datasets", "", "Named by `data.dataset`; options go in `data.options`.", ""]
    for name, loader in plugins["datasets"].items():
        lines += [f"### `{name}`", "", *_package_line("datasets", name), _doc(loader), ""]
        if getattr(loader, "Params", None) is not None:  # a loader without one reads its options itself
            lines += _params_table(loader.Params)

    lines += ["## Partitioners", "", "Named by `data.partition.kind`.", ""]
    for name, fn in plugins["partitioners"].items():
        lines += [f"### `{name}`", "", *_package_line("partitioners", name), _doc(fn), ""]

    lines += ["## Attacks", "", "Named in `attacks:` (`- NAME`, or `- {name: NAME, label: ..., PARAM: ...}`).", ""]
    for name, cls in plugins["attacks"].items():
        access = getattr(cls, "access", "black-box")
        lines += [f"### `{name}`", "", f"Access: **{access}**.", "", *_package_line("attacks", name), _doc(cls), ""]
        lines += _params_table(cls.Params)

    lines += ["## Defenses", "", "Keys of the `defenses:` block (`KEY: true` for the defaults, or `KEY: {PARAM: ...}`).", ""]
    for name, cls in plugins["defenses"].items():
        lines += [f"### `{name}`", "", f"Acts on: **{getattr(cls, 'acts_on', '?')}**."]
        conflicts = getattr(cls, "conflicts", None) or {}
        if conflicts:
            lines += ["", "Does not compose with: " + "; ".join(
                f"`{other}` ({_cell(why)})" for other, why in conflicts.items()) + "."]
        lines += ["", *_package_line("defenses", name), _doc(cls), ""]
        lines += _params_table(cls.Params)

    lines += ["## OOD sets", "", "Named in `evaluation.ood` (`[]` for none); `evaluation.ood_count` records each.", ""]
    for name, fn in plugins["ood sets"].items():
        lines += [f"### `{name}`", "", *_package_line("ood sets", name), _doc(fn), ""]

    lines += ["## Strategies", "", "Named by `server.strategy`; parameters are the other keys of `server:`.", ""]
    for name, entry in plugins["strategies"].items():
        lines += [f"### `{name}`", "", *_package_line("strategies", name), _doc(entry), ""]
        lines += _params_table(entry.Params)
    return "\n".join(lines)


# ---------------------------------------------------------------- the MkDocs hook
def on_files(files, config):
    """Add the generated pages to the build (mkdocs >= 1.6: `File.generated`)."""
    from mkdocs.structure.files import File

    for path, function in PAGES.items():
        files.append(File.generated(config, path, content=globals()[function]()))
    return files


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "schema"
    if what == "schema":
        sys.stdout.write(schema_text())
    elif what in ("scenario", "cli", "plugins"):
        sys.stdout.write(globals()[f"{what}_markdown"]())
    else:
        sys.exit("usage: python docs/hooks/reference.py [schema|scenario|cli|plugins]")
