"""The Flower ServerApp: runs the scenario's strategy for the scenario's rounds.

Built on Flower's legacy workflow (`DefaultWorkflow` over a `LegacyContext`), the path that
carries SecAgg+ in flwr 1.41. The strategy records the transcript; under `fedmia run` the
runner takes it from here, under `flwr run` this app finishes the run (attacks, report) itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flwr.common import Context
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.serverapp import Grid
from flwr.server.workflow import DefaultWorkflow

import strategies
from fedmia.data.federation import sealed
from fedmia.data.plan import build_plan
from fedmia.defenses import active
from fedmia.models import get_weights, scenario_model, weight_names
from fedmia.pipeline import finish_run, prepare_run_folder
from fedmia.message_rounds import run_message_rounds
from fedmia.scenario import Scenario
from fedmia.timeline import mark
from fedmia.validation import scenario_from_run_config
from fedmia.transcript import RoundView, Transcript


def make_strategy(scenario: Scenario, on_round_end: Callable[[RoundView], None] | None = None,
                  resume_from: Transcript | None = None):
    cls = strategies.STRATEGIES.get(scenario.server.strategy)
    params = cls.Params.model_validate(scenario.server.params())
    info = build_plan(scenario).info
    model = scenario_model(scenario, info, seed=scenario.seed)
    strategy = cls(
        scenario=scenario,
        initial_weights=get_weights(model),
        weight_names=weight_names(model),
        params=params,
        on_round_end=on_round_end,
        resume_from=resume_from,
    )
    for defense in active(scenario):  # e.g. central DP: Flower's clipping-and-noise wrapper
        strategy = defense.wrap_strategy(strategy, scenario)
    return strategy


@dataclass
class Handover:
    """What the in-process server app hands the runner (`fedmia run`): set as the app goes, read
    after `ended` is set. A typed seam: a renamed field fails where it is used, not silently."""

    ended: threading.Event = field(default_factory=threading.Event)
    federation_started: float | None = None  # perf_counter() at the app's start
    transcript: Transcript | None = None
    simulation_s: float | None = None
    error: BaseException | None = None  # the app's own failure (e.g. clients missing)
    flower_error: BaseException | None = None  # Flower's simulation raised (set by the runner's thread)


class ClientsMissing(RuntimeError):
    """Fewer SuperNodes connected than the scenario's clients within `runtime.connect_timeout_s`."""


def wait_for_clients(grid, scenario: Scenario) -> None:
    """Wait until every client of the scenario is connected, or fail within the timeout. Flower's
    legacy client manager would wait for the missing ones for up to a day."""
    needed, timeout = scenario.federation.clients, scenario.runtime.connect_timeout_s
    deadline = time.monotonic() + timeout
    while (connected := len(list(grid.get_node_ids()))) < needed:
        if time.monotonic() >= deadline:
            raise ClientsMissing(
                f"scenario '{scenario.name}' needs {needed} clients (federation.clients) but {connected} "
                f"SuperNode(s) connected within {timeout:g} s (runtime.connect_timeout_s)")
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))


class PacedGrid(Grid):
    """A grid that waits for replies at the simulation's pace. Flower's deployment grid sleeps
    3 s between pulls in `send_and_receive` (flwr 1.41 `superlink/grid/http_grid.py`; the
    simulation's in-memory grid polls every 0.1 s): every exchange of a round, four under SecAgg+,
    waited up to 3 s after the last reply had come. This wraps a grid and polls through its public
    `push_messages` / `pull_messages` every `interval` seconds; everything else is delegated."""

    def __init__(self, grid: Grid, interval: float = 0.1):
        self.grid, self.interval = grid, interval

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        """Flower's contract: push, then pull until every reply came or `timeout` passed."""
        waiting = set(self.push_messages(messages))
        mark("push", messages=len(waiting))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = []
        while waiting:
            pulled = list(self.pull_messages(waiting))
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if pulled:
                mark("replies", count=len(pulled), waiting=len(waiting))
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies


def run_federation(grid, context: Context, scenario: Scenario,
                   on_round_end: Callable[[RoundView], None] | None = None,
                   checkpoint: Path | None = None, resume: bool = False, client_api: str = "legacy") -> Transcript:
    """Run the rounds; with `checkpoint`, save the transcript there after every round, and with
    `resume`, continue from the rounds already saved there. `client_api`: "legacy" (fedmia's own
    client, SecAgg+) or "message" (a Message-API ClientApp, `fedmia/message_rounds.py`)."""
    previous = Transcript.load(checkpoint) if resume and checkpoint and (checkpoint / "index.json").exists() else None

    def after_round(view: RoundView) -> None:
        if checkpoint is not None:
            strategy.transcript.save_round(checkpoint, view)  # `strategy` is bound below, before any round
        if on_round_end is not None:
            on_round_end(view)

    with sealed("the federated rounds"):  # the server's strategy acts here: no ground truth
        strategy = make_strategy(scenario, after_round, resume_from=previous)
        remaining = scenario.federation.rounds - (previous.rounds[-1].round if previous and previous.rounds else 0)
        if remaining > 0:
            wait_for_clients(grid, scenario)
            if client_api == "message":
                refuse_on_message_api(scenario)
                run_message_rounds(PacedGrid(grid), strategy, remaining)
            else:
                legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=remaining), strategy=strategy)
                DefaultWorkflow(fit_workflow=fit_workflow(scenario))(PacedGrid(grid), legacy)
        for view in strategy.transcript.rounds:  # one whose federated evaluation never came
            strategy.end_round(view, evaluated=True)
    return strategy.transcript


def refuse_on_message_api(scenario: Scenario) -> None:
    """SecAgg+ runs only on Flower's legacy path in flwr 1.41 (`secaggplus_mod` answers with
    legacy `FitRes` records): a Message-API app cannot run under it. An aggregation that sums
    client *updates* (thresholded aggregation) would get the app's whole model instead."""
    if fit_workflow(scenario) is not None:
        raise ValueError(f"scenario '{scenario.name}': defenses.secagg: SecAgg+ runs only on Flower's legacy "
                         "client API in flwr 1.41; a Message-API ClientApp cannot run under it")
    hidden = [d.name for d in active(scenario) if d.hides_client_updates]
    if hidden:
        raise ValueError(f"scenario '{scenario.name}': defenses.{hidden[0]}: aggregates the clients' updates, and a "
                         "Message-API app replies with its whole model; expected no secure-aggregation defense "
                         "for an app")


def fit_workflow(scenario: Scenario):
    """The fit workflow a defense acting on aggregation supplies (SecAgg+), else Flower's default."""
    return next((workflow for defense in active(scenario) if (workflow := defense.fit_workflow()) is not None), None)


def make_server_app(scenario: Scenario | None = None, *, result: Handover | None = None,
                    on_round_end: Callable[[RoundView], None] | None = None,
                    checkpoint: Path | None = None, resume: bool = False, client_api: str = "legacy") -> ServerApp:
    """With `result`, the transcript is handed back through it (in-process simulation);
    without, the app reads `scenario` and `out` from the run config and finishes the run."""
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        current = scenario or scenario_from_run_config(context.run_config)
        out_dir = Path(str(context.run_config.get("out", f"runs/{current.name}")))
        if result is None:  # under `flwr run` this app owns the run folder
            prepare_run_folder(out_dir, current)
        started = time.perf_counter()
        if result is not None:
            result.federation_started = started
        try:
            transcript = run_federation(grid, context, current, on_round_end, client_api=client_api,
                                        checkpoint=checkpoint or out_dir / "transcript", resume=resume)
            simulation_s = time.perf_counter() - started
            if result is not None:
                result.transcript, result.simulation_s = transcript, simulation_s
                return
        except Exception as error:
            if result is None:
                raise
            result.error = error  # in-process: the runner raises it, not Flower's thread log
            return
        finally:
            if result is not None:  # the runner waits on it (fedmia.runner)
                result.ended.set()
        # a user's app composed with this ServerApp says who trained (`audit_app.compose_app`)
        client = str(context.run_config.get("client", "")) or None if client_api == "message" else None
        finish_run(current, transcript, out_dir, timing={"simulation_s": simulation_s}, client=client)

    return app


app = make_server_app()
# the ServerApp `flwr run` starts for a user's own Message-API app (`fedmia deploy-local --app`)
message_app = make_server_app(client_api="message")
