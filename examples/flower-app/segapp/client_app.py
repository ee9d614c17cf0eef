"""segapp's ClientApp (Message API): train and evaluate on this hospital's partition."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from segapp.task import load_data, network, test, train

app = ClientApp()


def _setting(context: Context, key: str, default):
    return type(default)(context.run_config.get(key, default))  # run_simulation passes an empty run config


def _loader(context: Context):
    return load_data(int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
                     str(context.run_config.get("data-path", "")), _setting(context, "image-size", 64),
                     _setting(context, "batch-size", 8))


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    # seeded by partition and round: the same run trains the same on any engine
    torch.manual_seed(1000 * int(context.node_config["partition-id"]) + int(msg.content["config"].get("server-round", 0)))
    model = network(_setting(context, "network", "unet"))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = _loader(context)
    loss = train(model, loader, _setting(context, "local-epochs", 2), _setting(context, "lr", 0.003))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": len(loader.dataset)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    model = network(_setting(context, "network", "unet"))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = _loader(context)
    loss, dice = test(model, loader)
    content = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "dice": dice, "num-examples": len(loader.dataset)})})
    return Message(content=content, reply_to=msg)
