"""The federation's model: families of builders, a checkpoint to start from, and the weights ⇄
NumPy bridge used by Flower and the transcript.

A model family is one file registered like every other plug-in (`fedmia/registry.py`): the
entry-point group `fedmia.models`, a class decorated with `@register_model_family("name")`.
fedmia ships `smp` (segmentation-models-pytorch, the default; `fedmia/models/smp.py`) and
`module` (any nn.Module from a factory, `fedmia/models/module.py`). A family builds a network
mapping (N, C, H, W) images to (N, K, H, W) logits; `build_model` checks that it does, and that
a `model.init` checkpoint fits it, so `fedmia validate` names the problem before anything runs.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn


# the family base lives apart so that family modules (smp.py, module.py, a user's) import it
# without importing this package's __init__ (which imports them): no cycle
from fedmia.models.family import MODEL_FAMILIES, ModelFamily, NoParams, register_model_family  # noqa: E402,F401


def family_of(spec) -> ModelFamily:
    return MODEL_FAMILIES.get(spec.family)()


def _options(family: ModelFamily, spec) -> Any:
    if family.Params is None:
        return dict(spec.options)
    try:
        return family.Params.model_validate(spec.options)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"model.options{'.' + where if where else ''}: {first['msg']} "
                         f"(family {spec.family}), found {first.get('input')!r}") from None


# the smp family's name checks, used by fedmia/validation.py and `fedmia list`
def check_architecture(arch: str) -> str:
    from fedmia.models.smp import check_architecture as check

    return check(arch)


def check_encoder(encoder: str) -> str:
    from fedmia.models.smp import check_encoder as check

    return check(encoder)


def __getattr__(name: str):
    if name == "ARCHITECTURES":  # smp's table, imported when asked for (`fedmia list`)
        from fedmia.models.smp import ARCHITECTURES

        return ARCHITECTURES
    raise AttributeError(name)


PROBE_SIZE = 64  # the probe image's side: a multiple of every 2**encoder_depth the schema allows


def build_model(spec, in_channels: int, num_classes: int, seed: int | None = None) -> nn.Module:
    """The family's network for `spec` (a `fedmia.scenario.ModelSpec`), with its own initial
    weights (random unless smp's `encoder_weights`); `scenario_model` loads `spec.init` on top.

    Raises ValueError for a family option, a network whose output is not (N, K, H, W), or a
    `model.init` checkpoint that does not fit the architecture — checked here, on the probe model
    validation builds, with the input channels and classes left free (validation does not know
    the data's yet; `scenario_model` then checks them exactly)."""
    from fedmia.models.adapters import adapt

    family = family_of(spec)
    options = _options(family, spec)
    if seed is not None:
        torch.manual_seed(seed)
    # a network with a fixed input, or one sigmoid logit, is built as it is: never asked for
    # channels or classes it does not have (the adapters then read its head as two classes)
    in_channels = spec.in_channels or in_channels
    outputs = 1 if spec.head == "sigmoid" else num_classes
    model = family.build(spec, in_channels, outputs, options)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: family {spec.family} built a {type(model).__name__}; expected an nn.Module")
    if spec.family != "smp":  # smp's builder probes (and prunes) itself
        _check_output(model, spec, in_channels, outputs)
    if spec.init is not None:
        _check_init_fits(spec, in_channels, num_classes)
    return adapt(model, spec)


def _check_output(model: nn.Module, spec, in_channels: int, num_classes: int) -> None:
    probe = torch.zeros(2, in_channels, PROBE_SIZE, PROBE_SIZE)
    was_training = model.training
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        with torch.no_grad():
            output = model.train()(probe)  # train mode: what local training runs
    except Exception as error:  # noqa: BLE001  (a user's network may raise anything)
        raise ValueError(f"model: family {spec.family} network fails on a {tuple(probe.shape)} batch: "
                         f"{type(error).__name__}: {error}") from None
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])  # the probe's BatchNorm statistics are not training
        model.train(was_training)
    expected = (2, num_classes, PROBE_SIZE, PROBE_SIZE)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        found = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        hint = ""
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[1] == 1 and spec.head != "sigmoid":
            hint = "; one output channel is a sigmoid head: set model.head: sigmoid"
        raise ValueError(f"model: family {spec.family} maps a {tuple(probe.shape)} batch to {found}; expected "
                         f"logits of shape {expected} (N, {'1 logit' if spec.head == 'sigmoid' else 'classes'}, H, W)"
                         + hint)


def uses_group_norm(scenario) -> bool:
    """Local DP-SGD needs per-sample gradients, which BatchNorm (mixing a batch) forbids; central
    DP clips whole updates, which BatchNorm's running statistics and step counters would swamp."""
    from fedmia.defenses import active  # each defense says whether it needs the model without BatchNorm

    return scenario.model.norm == "group" or (scenario.model.norm == "auto"
                                              and any(d.needs_group_norm for d in active(scenario)))


def scenario_model(scenario, info, seed: int | None = None) -> nn.Module:
    """The federation's model for `scenario`: every party (server, clients, attacks, evaluator)
    builds it here, so they agree on the architecture — GroupNorm included when DP needs it —
    and on the starting point: `model.init`'s weights when given (the server's first broadcast)."""
    spec = scenario.model
    if spec.in_channels is not None and spec.in_channels != info.in_channels:
        raise ValueError(f"model.in_channels: the network takes {spec.in_channels} input channel(s), the data's "
                         f"images have {info.in_channels} (data.options.channels)")
    if spec.head == "sigmoid" and info.num_classes != 2:
        raise ValueError(f"model.head: sigmoid is one logit for a binary mask; the data has {info.num_classes} "
                         "classes (expected 2, or head: softmax with one logit per class)")
    model = build_model(spec, info.in_channels, info.num_classes, seed=seed)
    state = read_checkpoint(spec.init) if spec.init is not None else None
    group_norm = uses_group_norm(scenario)
    if state is not None and (not group_norm or not state_problems(model, state)):
        load_checkpoint(model, state, spec.init)  # a BatchNorm checkpoint, before any conversion
        state = None
    if group_norm:
        from fedmia.defenses.norms import to_dp_compatible

        model = to_dp_compatible(model)
    if state is not None:  # a GroupNorm checkpoint (saved from a DP model)
        load_checkpoint(model, state, spec.init)
    return model


# ---- model.init: a checkpoint to start from -----------------------------------------------
def read_checkpoint(path: str) -> "OrderedDict[str, torch.Tensor]":
    """The state dict in `path`: a file of `torch.save(model.state_dict())` (or .safetensors), or
    a folder written by smp's `save_pretrained` (model.safetensors, else pytorch_model.bin)."""
    where = Path(path)
    expected = ("expected a state-dict file (torch.save(model.state_dict())) or a folder written by smp's "
                "save_pretrained")
    if where.is_dir():
        found = [where / n for n in ("model.safetensors", "pytorch_model.bin") if (where / n).is_file()]
        if not found:
            listing = ", ".join(sorted(p.name for p in where.iterdir())[:8]) or "nothing"
            raise ValueError(f"model.init: folder {path} has no model.safetensors or pytorch_model.bin (found "
                             f"{listing}); {expected}")
        where = found[0]
    elif not where.is_file():
        raise ValueError(f"model.init: {path} does not exist; {expected}")
    try:
        if where.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(where), device="cpu")
        else:
            state = torch.load(where, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle, zip and safetensors errors alike)
        raise ValueError(f"model.init: {where} cannot be read as a state dict ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200] if str(error) else ''}); {expected}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint that wraps the model's state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.init: {where} holds a {type(state).__name__}, not a mapping of tensor names to "
                         f"tensors; {expected}")
    return OrderedDict(state)


def _pruned_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(f"{name}." for name in getattr(model, "pruned_modules", ()))


def state_problems(model: nn.Module, state: dict[str, torch.Tensor],
                   free_dims: dict[str, set[int]] | None = None) -> list[str]:
    """How `state` fails to fit `model`, first problem first: tensors of another shape (name,
    expected, found), then missing and unexpected names. Tensors of encoder stages the model
    pruned are not expected (a full model's checkpoint fits). `free_dims`: dimensions of a tensor
    that may differ (those set by the input channels or classes)."""
    own = model.state_dict()
    pruned = _pruned_prefixes(model)
    problems = []
    for name, tensor in own.items():
        if name in state:
            found = tuple(state[name].shape)
            free = (free_dims or {}).get(name, set())
            if len(found) != tensor.dim() or any(a != b for i, (a, b) in enumerate(zip(found, tensor.shape))
                                                 if i not in free):
                problems.append(f"tensor {name}: expected shape {tuple(tensor.shape)}, found {found}")
    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own and not n.startswith(pruned)]
    for names, what in ((missing, "missing"), (unexpected, "unexpected")):
        if names:
            more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
            problems.append(f"{len(names)} {what} tensor(s): {', '.join(names[:3])}{more}")
    return problems


def misfit_hint(problems: list[str]) -> str:
    """What a misfit most likely means, for the two descriptions users got wrong most: a
    one-channel (sigmoid) head, and smp's own decoder widths."""
    text = " ".join(problems)
    if any(re.search(r"expected shape \(2\b.*found \(1\b", p) for p in problems):
        return " (one output channel: a sigmoid head, smp's classes=1; set model.head: sigmoid)"
    if "decoder" in text:
        return (" (a plain smp.Unet(encoder_name=...) is encoder_depth 5 with decoder_channels [256, 128, 64, 32, "
                "16], fedmia's default at depth 5; set encoder_depth and decoder_channels as the model was built)")
    return ""


def load_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load `state` into `model` exactly (names, shapes), or raise ValueError naming the first
    problem."""
    problems = state_problems(model, state)
    if problems:
        raise ValueError(f"model.init: {path} does not fit the model: {problems[0]}"
                         + (f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else "")
                         + misfit_hint(problems))
    own = model.state_dict()
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name].to(tensor.dtype))


def _check_init_fits(spec, in_channels: int, num_classes: int) -> None:
    """`spec.init` against the architecture, the input channels and classes left free (a probe
    build does not know the data's): which dimensions those set is learnt from a second build
    with one more of each. Cached per checkpoint file and spec."""
    path = Path(spec.init)
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else None
    problem = _init_problem(spec.model_dump_json(), stamp, in_channels, num_classes)
    if problem:
        raise ValueError(problem)


@functools.lru_cache(maxsize=16)
def _init_problem(spec_json: str, stamp, in_channels: int, num_classes: int) -> str | None:
    from fedmia.scenario import ModelSpec

    spec = ModelSpec.model_validate_json(spec_json).model_copy(update={"init": None})
    spec_init = ModelSpec.model_validate_json(spec_json).init
    state = read_checkpoint(spec_init)
    base = build_model(spec, in_channels, num_classes)
    other = build_model(spec, in_channels + 1, num_classes + 1)
    other_state = other.state_dict()
    free = {name: {i for i, (a, b) in enumerate(zip(t.shape, other_state[name].shape)) if a != b}
            for name, t in base.state_dict().items() if name in other_state and t.shape != other_state[name].shape}
    candidates = [(base, free)]
    if spec.norm != "batch":  # a checkpoint of a GroupNorm model (DP) fits the converted one
        from fedmia.defenses.norms import to_dp_compatible

        converted = to_dp_compatible(base)
        converted_other = to_dp_compatible(other).state_dict()
        free_gn = {name: {i for i, (a, b) in enumerate(zip(t.shape, converted_other[name].shape)) if a != b}
                   for name, t in converted.state_dict().items()
                   if name in converted_other and t.shape != converted_other[name].shape}
        candidates.append((converted, free_gn))
    found = [state_problems(model, state, dims) for model, dims in candidates]
    if any(not problems for problems in found):
        return None
    problems = found[0] if spec.norm != "group" else found[-1]
    return (f"model.init: {spec_init} does not fit family {spec.family}'s model: {problems[0]}"
            + (f"; {len(problems) - 1} more problem(s)" if len(problems) > 1 else "") + misfit_hint(problems))


# ---- the weights bridge ---------------------------------------------------------------------
def get_weights(model: nn.Module) -> list[np.ndarray]:
    """All state (parameters and buffers) in state_dict order, as NumPy arrays of at least one
    dimension: SecAgg+ corrupts 0-d arrays (BatchNorm's `num_batches_tracked`)."""
    return [np.atleast_1d(value.detach().cpu().numpy()).copy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    current = model.state_dict()
    if len(current) != len(weights):
        raise ValueError(f"model has {len(current)} tensors, received {len(weights)}")
    with warnings.catch_warnings():
        # a streamed transcript's arrays are read-only; load_state_dict only reads them (copies)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        state = OrderedDict(
            (key, torch.as_tensor(np.asarray(w)).reshape(target.shape).to(target.dtype))
            for (key, target), w in zip(current.items(), weights)
        )
    model.load_state_dict(state, strict=True)


def weighted_sum(arrays_per_client: list[list[np.ndarray]], share) -> list[np.ndarray]:
    """Σ_k share_k · arrays_k, array by array, summed in float64 and stored as float32: FedAvg's
    mean (the server's, and the adversary's simulated federations')."""
    return [sum(w * arrays[i].astype(np.float64) for w, arrays in zip(share, arrays_per_client)).astype(np.float32)
            for i in range(len(arrays_per_client[0]))]


def weight_names(model: nn.Module) -> list[str]:
    return list(model.state_dict().keys())


def describe_model(spec) -> str:
    """How metrics.json names the model: smp's arch/encoder (depth), else the family and factory."""
    if spec.family == "smp":
        pretrained = f", {spec.encoder_weights}" if spec.encoder_weights else ""
        text = f"{spec.arch}/{spec.encoder} (depth {spec.encoder_depth}{pretrained})"
    else:
        text = f"{spec.family}" + (f" {spec.factory}" if spec.factory else "")
    return text + (f", init {spec.init}" if spec.init else "")
