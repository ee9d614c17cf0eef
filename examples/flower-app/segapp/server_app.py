"""segapp's ServerApp: FedAvg over every hospital; the final global model saved."""

from __future__ import annotations

import os

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from segapp.task import network

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config.get("num-server-rounds", 3))
    torch.manual_seed(0)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    initial = network(str(context.run_config.get("network", "unet"))).state_dict()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds)
    out = str(context.run_config.get("final-model", "")) or os.environ.get("SEGAPP_OUT", "final_model.pt")
    torch.save(result.arrays.to_torch_state_dict(), out)
