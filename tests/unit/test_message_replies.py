"""A Message-API reply, read by fedmia's server (fedmia/message_rounds.py): the model back in the
network's order, and a reply out of contract named by its node and cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401  (flwr's to_torch_state_dict looks for it when flwr is imported)
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedmia.message_rounds import BadReply, from_reply, to_arrays

NAMES, SHAPES = ["conv.weight", "conv.bias"], [(2, 3), (2,)]


@pytest.fixture(autouse=True)
def a_run(monkeypatch):
    """Flower makes a message only inside a run (its task identity): a run of this test's."""
    from flwr.supercore.task_identity import TaskIdentity

    for key in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, key, 1, raising=False)


def reply(content: RecordDict) -> Message:
    return Message(content=content, dst_node_id=7, message_type="train")


def test_the_model_goes_out_keyed_by_the_networks_names_and_comes_back_in_its_order():
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, dtype=np.float32)]
    sent = to_arrays(weights, NAMES)
    assert list(sent.keys()) == NAMES and list(sent.to_torch_state_dict()) == NAMES  # what the app loads
    back = ArrayRecord({name: sent[name] for name in reversed(NAMES)})  # an app may reorder its keys
    got, metrics, examples = from_reply(reply(RecordDict({"arrays": back, "metrics": MetricRecord({"num-examples": 5})})),
                                        NAMES, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(got, weights)) and examples == 5 and metrics["num-examples"] == 5


def test_a_reply_out_of_contract_names_the_cause():
    with pytest.raises(BadReply, match="the reply has no 'arrays' record"):
        from_reply(reply(RecordDict({"metrics": MetricRecord({"num-examples": 5})})), NAMES, SHAPES)
    partial = to_arrays([np.zeros((2, 3), dtype=np.float32)], NAMES[:1])
    with pytest.raises(BadReply, match="1 of its 2 entries are missing \\(first: 'conv.bias'\\)"):
        from_reply(reply(RecordDict({"arrays": partial})), NAMES, SHAPES)
    wrong = to_arrays([np.zeros((3, 3), dtype=np.float32), np.zeros(2, dtype=np.float32)], NAMES)
    with pytest.raises(BadReply, match="'conv.weight' has shape \\(3, 3\\), expected \\(2, 3\\)"):
        from_reply(reply(RecordDict({"arrays": wrong})), NAMES, SHAPES)


def test_what_the_app_raised_is_found_at_the_end_of_flowers_error_reply():
    from fedmia.message_rounds import app_error

    reason = ("Traceback (most recent call last):\n  File \"ray_actor.py\", line 65, in run\n    raise ClientAppException(str(ex))"
              "\n           ^^^^^^^^\nflwr.clientapp.client_app.ClientAppException: \nException ClientAppException "
              "occurred. Message: [Errno 2] No such file or directory: 'data/images''>\n")
    assert app_error(reason) == "[Errno 2] No such file or directory: 'data/images'"
    assert app_error("ValueError: the app's own words") == "ValueError: the app's own words"
