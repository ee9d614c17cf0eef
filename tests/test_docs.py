"""The documentation cannot drift from the code: every schema and plug-in parameter has a
description, the README stays short and its commands parse, the docs build strictly with the
generated reference, and the committed JSON schema is the one the code gives."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, RootModel

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SCHEMA_FILE = REPO / "docs" / "scenario.schema.json"
SHIPPED_PACKAGES = ("fedmia.", "strategies.")  # plug-ins of this repository (not tests/plugins/)


def _reference_module():
    """docs/hooks/reference.py, the generator the MkDocs hook runs, imported by path."""
    spec = importlib.util.spec_from_file_location("fedmia_docs_reference", REPO / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _undescribed(model: type[BaseModel], prefix: str, seen: set) -> list[str]:
    """Dotted names of fields without a description, walking nested models recursively."""
    if model in seen:
        return []
    seen = seen | {model}
    reference = _reference_module()
    missing = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if not (field.description or "").strip():
            missing.append(key)
        for sub, in_list in reference._models_in(field.annotation):
            if issubclass(sub, RootModel) and "root" in sub.model_fields:
                if not (sub.model_fields["root"].description or "").strip():
                    missing.append(f"{key} (root)")
                continue
            missing += _undescribed(sub, f"{key}[]." if in_list else f"{key}.", seen)
    return missing


# ---------------------------------------------------------------- (a) descriptions
def test_every_scenario_field_has_a_description():
    from fedmia.scenario import Scenario

    missing = _undescribed(Scenario, "", set())
    assert not missing, f"scenario fields without a description (fedmia/scenario.py): {missing}"


def _shipped(obj) -> bool:
    return getattr(obj, "__module__", "").startswith(SHIPPED_PACKAGES)


def test_every_plugin_parameter_has_a_description():
    import strategies
    from fedmia.attacks import ATTACKS
    from fedmia.defenses import DEFENSES

    models = {}
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        if _shipped(cls):
            models[f"attack {name} ({cls.Params.__module__})"] = cls.Params
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        if _shipped(cls):
            models[f"defense {name} ({cls.Params.__module__})"] = cls.Params
    for name in strategies.STRATEGIES.names():
        entry = strategies.STRATEGIES.get(name)
        if _shipped(entry):
            models[f"strategy {name} ({entry.Params.__module__})"] = entry.Params
    from fedmia.data.datasets import DATASETS

    for name in DATASETS.names():
        loader = DATASETS.get(name)
        if _shipped(loader):
            models[f"dataset {name} ({loader.__module__})"] = loader.Params  # every shipped dataset has one
    assert len(models) >= 33, f"expected the shipped attacks, defenses and strategies, found {sorted(models)}"
    missing = [f"{where}: {field}" for where, model in models.items() for field in _undescribed(model, "", set())]
    assert not missing, "plug-in parameters without a description:\n" + "\n".join(missing)


# ---------------------------------------------------------------- (b) README size
def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= 10240, f"README.md is {size} bytes; keep it <= 10240 and move detail into docs/"


def test_readme_quick_start_keeps_the_ci_commands():
    """.ci/run runs the README's install and test commands: every test, the slow set included."""
    commands = [line.split("#")[0].strip() for block in _bash_blocks(README.read_text()) for line in block]
    assert 'pip install -e ".[dev]"' in commands
    assert "pytest && pytest -m slow" in commands
    ci = [line.strip() for line in (README.parent / ".ci" / "run").read_text().splitlines()]
    assert 'pip install -e ".[dev]"' in ci and "pytest" in ci and "pytest -m slow" in ci


# ---------------------------------------------------------------- (c) the docs build
# slow: .ci/run builds the same site with `mkdocs build --strict` before the tests
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[dev]')")
def test_docs_build_strictly_with_the_generated_reference(tmp_path):
    import strategies
    from fedmia.attacks import ATTACKS
    from fedmia.data.datasets import DATASETS
    from fedmia.defenses import DEFENSES

    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scenario_page = (site / "reference" / "scenario" / "index.html").read_text()
    keys = _reference_module().scenario_keys()
    assert len(keys) > 60
    missing = [key for key in keys if f"<code>{key}</code>" not in scenario_page]
    assert not missing, f"scenario keys missing from reference/scenario: {missing}"
    plugins_page = (site / "reference" / "plugins" / "index.html").read_text()
    for family, names in [("attack", ATTACKS.names()), ("defense", DEFENSES.names()),
                          ("strategy", strategies.STRATEGIES.names()), ("dataset", DATASETS.names())]:
        shipped = [n for n in names if n in _registered_in_a_fresh_process(family)]
        missing = [n for n in shipped if f"<code>{n}</code>" not in plugins_page]
        assert not missing, f"{family} plug-ins missing from reference/plugins: {missing}"
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for command in _reference_module().cli_commands():
        assert f"<code>fedmia {command}</code>" in cli_page, command


def _env() -> dict:
    import os

    return dict(os.environ)


_FRESH: dict[str, list[str]] = {}


def _registered_in_a_fresh_process(family: str) -> list[str]:
    """The names the docs build sees: registered by importing fedmia alone (this test session may
    also hold tests/plugins/' examples)."""
    if not _FRESH:
        code = ("import json, strategies\n"
                "from fedmia.attacks import ATTACKS\nfrom fedmia.defenses import DEFENSES\n"
                "from fedmia.data.datasets import DATASETS\n"
                "print(json.dumps({'attack': ATTACKS.names(), 'defense': DEFENSES.names(),"
                " 'strategy': strategies.STRATEGIES.names(), 'dataset': DATASETS.names()}))")
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             timeout=120, check=True)
        _FRESH.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return _FRESH[family]


# ---------------------------------------------------------------- (d) README commands parse
def _bash_blocks(text: str) -> list[list[str]]:
    """The lines of every ```bash block, continuation lines joined."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines, current = [], ""
        for raw in body.splitlines():
            if raw.rstrip().endswith("\\"):
                current += raw.rstrip()[:-1] + " "
                continue
            lines.append(current + raw)
            current = ""
        blocks.append(lines)
    return blocks


def _fedmia_lines(text: str) -> list[list[str]]:
    out = []
    for block in _bash_blocks(text):
        for line in block:
            words = shlex.split(line, comments=True)
            if words and words[0] == "fedmia":
                out.append(words)
    return out


def _check_command_lines(lines: list[list[str]], where: str, helps: dict[str, str]) -> None:
    """Each `fedmia SUBCOMMAND ...` line: its `--help` succeeds and names every `--flag` used."""
    from typer.testing import CliRunner

    from fedmia.cli import app

    runner = CliRunner()
    for words in lines:
        command = words[1]
        if command not in helps:
            result = runner.invoke(app, [command, "--help"], terminal_width=200)
            assert result.exit_code == 0, f"{where}: `fedmia {command} --help` failed: {result.output}"
            helps[command] = result.output
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command]), \
                f"{where}: `{' '.join(words)}`: `fedmia {command}` has no option {flag}"


def test_readme_fedmia_commands_parse():
    lines = _fedmia_lines(README.read_text())
    assert len(lines) >= 5, "expected the README's fedmia commands in ```bash blocks"
    _check_command_lines(lines, "README", {})


def test_docs_fedmia_commands_parse():
    """The same for the command lines quoted in docs/*.md."""
    helps: dict[str, str] = {}
    for page in sorted((REPO / "docs").glob("*.md")):
        _check_command_lines(_fedmia_lines(page.read_text()), page.name, helps)


# ---------------------------------------------------------------- the committed JSON schema
def test_committed_json_schema_is_current():
    """`fedmia schema` writes the schema the shipped scenarios name; the committed copy is it."""
    import subprocess
    import sys

    expected = _reference_module().schema_text()
    written = subprocess.run([sys.executable, "-m", "fedmia.cli", "schema"], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
    assert written.returncode == 0 and written.stdout == expected
    assert SCHEMA_FILE.read_text() == expected, (
        "docs/scenario.schema.json differs from the schema in fedmia/scenario.py; regenerate it with "
        "`fedmia schema --out docs/scenario.schema.json`")


def test_cli_help_reads_as_sentences_and_version_prints():
    """Docstring line breaks do not reach the help (each command's summary is one sentence, not
    cut where its docstring wrapped), and --version names fedmia's version and its libraries'."""
    import subprocess
    import sys
    from importlib.metadata import version

    env = {**__import__("os").environ, "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "fedmia.cli", "--help"], capture_output=True, text=True,
                           cwd=REPO, env=env, timeout=60).stdout
    rows = [line.strip("│ ").strip() for line in shown.splitlines() if line.startswith("│ ")]
    commands = [row for row in rows if row and not row.startswith("-")]
    assert len(commands) >= 12
    for row in commands:  # at 200 columns every summary fits on its own line, ending its sentence
        assert row.endswith("."), row
    printed = subprocess.run([sys.executable, "-m", "fedmia.cli", "--version"], capture_output=True, text=True,
                             cwd=REPO, timeout=60).stdout
    assert printed.startswith(f"fedmia {version('fedmia')} torch ") and "flwr " in printed


def _shipped_scenarios() -> list[Path]:
    return [p for p in sorted((REPO / "scenarios").glob("*.yaml")) if not p.name.startswith("sweep-")]


def test_shipped_scenarios_point_at_the_schema():
    line = "# yaml-language-server: $schema=../docs/scenario.schema.json"
    wrong = [p.name for p in _shipped_scenarios() if p.read_text().splitlines()[0] != line]
    assert not wrong, f"first line of these scenarios is not `{line}`: {wrong}"


def test_shipped_scenarios_validate_against_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for path in _shipped_scenarios():
        for error in validator.iter_errors(yaml.safe_load(path.read_text())):
            problems.append(f"{path.name}: {'.'.join(map(str, error.path))}: {error.message}")
    assert not problems, "\n".join(problems)


def test_json_schema_rejects_what_the_schema_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not validator.is_valid({"name": "x", "federation": {"clinets": 4}})  # a typo
    assert not validator.is_valid({"name": "x", "data": {"image_size": 8}})  # below 16
    assert validator.is_valid({"name": "x", "attacks": ["loss", {"name": "rmia", "models": 4}],
                               "defenses": {"dp": {"mode": "local"}}})
