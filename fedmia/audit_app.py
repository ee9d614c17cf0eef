"""`fedmia audit-app APP_DIR SCENARIO`: a user's own Flower app — its ClientApp, unchanged —
under fedmia's ServerApp in Flower's simulation engine on Ray.

The app is read as `flwr run` reads it: `[tool.flwr.app.components] clientapp` names the
ClientApp, `[tool.flwr.app.config]` its run config (overridden by `--run-config`), and each
simulated SuperNode gets `partition-id` / `num-partitions` as Flower gives them. fedmia's
ServerApp replaces the app's: its strategy (honest or malicious) talks to the app through the
Message API (`fedmia/message_rounds.py`), the transcript is kept, and the run folder is finished
as after `fedmia run`. The scenario describes what the app trains (`model: {family: module,
factory: ...}`), the sites' folders whose manifests say who trained on what (`data.sites`), and
the auditor's folders; `federation.clients` counts site folders, `--supernodes` the app's clients.

Flower's public `run_simulation` passes every ClientApp an empty run config (flwr 1.41), so the
app runs through `_run_simulation` with the app's folder and a `Run` holding the overrides: the
path `flwr run` takes for a local simulation (`flwr/simulation/run_simulation.py`). One adapter,
here; `tests/test_flower_app.py` holds it to the app's own config.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AppError(ValueError):
    """An app folder fedmia cannot run: the message names the app and the cause (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class FlowerApp:
    """A Flower app as its pyproject.toml declares it."""

    folder: Path
    name: str
    clientapp: str  # "package.module:attribute"
    config: dict[str, Any]  # [tool.flwr.app.config]
    supernodes: int | None  # the local simulation federation's num-supernodes, if it says

    @property
    def description(self) -> str:
        """Who trained, as metrics.json's setup says it."""
        return f"app {self.name}: its ClientApp ({self.clientapp}), unchanged"


def read_app(folder: Path) -> FlowerApp:
    """The app in `folder`; AppError naming the file and key when it is not a Flower app."""
    folder = Path(folder).resolve()
    project = folder / "pyproject.toml"
    if not project.is_file():
        raise AppError(f"{folder}: not a Flower app (no pyproject.toml)")
    try:
        toml = tomllib.loads(project.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise AppError(f"{project}: not valid TOML ({error})") from None
    flwr = toml.get("tool", {}).get("flwr", {})
    components = flwr.get("app", {}).get("components")
    if not isinstance(components, dict) or not isinstance(components.get("clientapp"), str):
        raise AppError(f"{project}: [tool.flwr.app.components] clientapp: missing; expected the ClientApp as "
                       "\"package.module:app\" (what `flwr new` writes)")
    federations = flwr.get("federations", {})
    default = federations.get("default")
    options = (federations.get(default, {}) if isinstance(default, str) else {}).get("options", {})
    supernodes = options.get("num-supernodes")
    name = str(toml.get("project", {}).get("name", folder.name))
    return FlowerApp(folder, name, components["clientapp"], dict(flwr.get("app", {}).get("config", {})),
                     int(supernodes) if isinstance(supernodes, int) else None)


def load_client_app(app: FlowerApp):
    """The app's ClientApp object, imported from its folder (as `flwr run` would)."""
    from flwr.clientapp import ClientApp

    module_name, _, attribute = app.clientapp.partition(":")
    if str(app.folder) not in sys.path:
        sys.path.insert(0, str(app.folder))
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001  (the app's own import may raise anything)
        raise AppError(f"app {app.name} ({app.folder}): clientapp {app.clientapp!r} does not import: "
                       f"{type(error).__name__}: {error}") from None
    client_app = getattr(module, attribute or "app", None)
    if not isinstance(client_app, ClientApp):
        raise AppError(f"app {app.name}: clientapp {app.clientapp!r} is not a flwr ClientApp "
                       f"(found {type(client_app).__name__})")
    return client_app


def compose_app(app: FlowerApp, into: Path) -> Path:
    """The app with fedmia's ServerApp in place of its own, for `flwr run` on a deployment: a
    copy of its folder whose pyproject names `fedmia.server_app:message_app` as serverapp and
    declares the run-config keys that ServerApp reads (`scenario-b64`, `out`, `client`: the app's
    description for metrics.json). Its ClientApp,
    package and config stay as they are. The pyproject is edited as text: the stdlib reads TOML
    but does not write it, and only two lines change."""
    import re
    import shutil

    into = Path(into)
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(app.folder, into, ignore=shutil.ignore_patterns("__pycache__", ".git", "*.egg-info", "*.pt"))
    text = (into / "pyproject.toml").read_text()
    text, swapped = re.subn(r'(?m)^(\s*serverapp\s*=\s*)"[^"]*"', r'\1"fedmia.server_app:message_app"', text)
    if not swapped:  # no serverapp line of its own: add one beside the clientapp
        text = re.sub(r'(?m)^(\s*clientapp\s*=.*)$', r'\1\nserverapp = "fedmia.server_app:message_app"', text, count=1)
    keys = [key for key in ("scenario-b64", "out", "client") if key not in app.config]
    if keys:
        declared = "".join(f'{key} = ""\n' for key in keys)
        if "[tool.flwr.app.config]" in text:
            text = text.replace("[tool.flwr.app.config]\n", "[tool.flwr.app.config]\n" + declared, 1)
        else:
            text += "\n[tool.flwr.app.config]\n" + declared
    (into / "pyproject.toml").write_text(text)
    return into


def toml_config(values: dict[str, Any]) -> str:
    """`flwr run --run-config`'s form of a mapping: space-separated KEY=VALUE, TOML values."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return "'" + str(v) + "'"

    return " ".join(f"{key}={value(v)}" for key, v in values.items())


def parse_overrides(words: list[str], app: FlowerApp) -> dict[str, Any]:
    """`--run-config key=value` (TOML values, as `flwr run --run-config`): keys the app declares."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip()
        if not sep or key not in app.config:
            raise AppError(f"app {app.name}: --run-config {word!r}: expected KEY=VALUE with KEY one of "
                           f"{', '.join(sorted(app.config)) or '(the app declares no run config)'}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value  # a bare word: a string
    return out


def _simulate(app: FlowerApp, server_app, client_app, supernodes: int, overrides: dict, backend: dict, result):
    """Flower's simulation of the composed app on a thread; see the module's docstring for why
    `_run_simulation`. Ray is stopped before `result.ended` is set."""
    import ray
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    def target() -> None:
        try:
            # the Run `_run_simulation` makes when given none, with the app's overrides in it
            run_id = generate_rand_int_from_bytes(RUN_ID_NUM_BYTES)
            run = Run.create_empty(run_id=run_id)
            run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
            run.federation_id = NOOP_FEDERATION_ID
            run.override_config = dict(overrides)
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
            _run_simulation(num_supernodes=supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                            client_app=client_app, server_app=server_app, backend_name="ray",
                            backend_config=backend, app_dir=str(app.folder), is_app=True, run=run)
        except BaseException as error:  # raised in the caller's thread
            result.flower_error = error
        finally:
            if ray.is_initialized():
                ray.shutdown()
            result.ended.set()

    thread = threading.Thread(target=target, name="fedmia-app", daemon=True)
    thread.start()
    return thread


def app_scenario(scenario, nodes: int):
    """The scenario as the app runs it: `federation.clients` counts the app's SuperNodes (the
    scenario's own count is its site folders)."""
    return scenario.model_copy(update={"federation": scenario.federation.model_copy(update={"clients": nodes})})


def refuse_client_defenses(scenario, app: FlowerApp) -> None:
    """A defense that acts in the clients' training is the app's to apply, not fedmia's: naming
    one in the scenario would audit a defense that never ran."""
    from fedmia.defenses import active
    from fedmia.defenses.base import LOCAL_STAGES

    inside = [d.name for d in active(scenario) if d.acts_on in (*LOCAL_STAGES, "received model")]
    if inside:
        raise AppError(f"app {app.name}: defenses.{inside[0]} acts in the clients' training, which is the app's own "
                       "code: fedmia cannot apply it there; expected defenses of the server, the release or the "
                       "query API only")


def prepare_app(folder: Path, scenario, run_config=()) -> tuple[FlowerApp, dict[str, Any], Any]:
    """(the app, its run-config overrides, its ClientApp), checked against the scenario before
    anything runs: what every command that runs an app refuses in one line (AppError, or
    ValueError for a defense the Message path cannot carry)."""
    from fedmia.server_app import refuse_on_message_api

    app = read_app(folder)
    overrides = parse_overrides(list(run_config), app)
    client_app = load_client_app(app)
    refuse_on_message_api(scenario)
    refuse_client_defenses(scenario, app)
    return app, overrides, client_app


def app_clients(app: FlowerApp, supernodes: int | None, scenario) -> int:
    """The app's clients (SuperNodes): as asked, else its own federation's, else the scenario's."""
    return supernodes or app.supernodes or scenario.federation.clients


def audit_app(folder: Path, scenario, out_dir: Path, *, run_config: list[str] = (), supernodes: int | None = None,
              manifests: Path | None = None, force: bool = False):
    """Run the app's ClientApp under the scenario's server strategy; finish the run folder (and,
    with `manifests`, its membership figures). Returns the run's RunMetrics."""
    from fedmia.evaluation.manifests import evaluate_with_manifests
    from fedmia.pipeline import finish_run, prepare_run_folder
    from fedmia.ray_start import backend_config
    from fedmia.server_app import Handover, make_server_app

    started = time.perf_counter()
    app, overrides, client_app = prepare_app(folder, scenario, run_config)
    if manifests is not None:
        from fedmia.data.sites import read_manifests

        read_manifests(Path(manifests), [site.name for site in scenario.data.sites])
    nodes = app_clients(app, supernodes, scenario)
    running = app_scenario(scenario, nodes)
    out_dir = Path(out_dir)
    prepare_run_folder(out_dir, running, force=force)
    # Ray's workers import the app's package from the PYTHONPATH they inherit
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(app.folder), os.environ.get("PYTHONPATH")) if p)
    result = Handover()
    server_app = make_server_app(running, result=result, checkpoint=out_dir / "transcript", client_api="message")
    thread = _simulate(app, server_app, client_app, nodes, overrides, backend_config(running), result)
    result.ended.wait()
    thread.join()
    if result.error is not None:
        raise result.error
    if result.transcript is None:
        raise result.flower_error or RuntimeError(f"app {app.name}: the simulation ended without a transcript")
    metrics = finish_run(running, result.transcript, out_dir, timing={"simulation_s": result.simulation_s},
                         started=started, client=app.description)
    if manifests is not None:
        metrics = evaluate_with_manifests(running, out_dir, manifests)
    return metrics


@dataclass(frozen=True)
class AppRuns:
    """How `replicate` and `audit` train one seed when the federation is a user's app: its
    ClientApp under the seed's scenario (`audit_app`), a finished run of the same reused."""

    folder: Path
    run_config: tuple[str, ...] = ()
    supernodes: int | None = None
    manifests: Path | None = None

    def nodes(self, scenario) -> int:
        return app_clients(read_app(self.folder), self.supernodes, scenario)

    def finished(self, out_dir: Path, scenario):
        """The run's metrics when `out_dir` holds this app's finished run of `scenario`, else None."""
        from fedmia.evaluation.run import finished_run

        run = finished_run(out_dir, app_scenario(scenario, self.nodes(scenario)))
        return run.metrics if run is not None and run.metrics.membership is None else None

    def __call__(self, out_dir: Path, scenario, console=None):
        metrics = self.finished(out_dir, scenario)
        if metrics is not None:
            return metrics, "reused"
        return audit_app(self.folder, scenario, out_dir, run_config=list(self.run_config), supernodes=self.supernodes,
                         manifests=self.manifests, force=True), "ran"
