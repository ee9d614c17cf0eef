"""The scenario file: one YAML document that fixes a whole experiment.

The pydantic models below are the schema (every field typed, with a default, unknown keys
rejected); nothing here imports a plug-in (attacks, strategies, datasets, defenses are named by
string and checked by fedmia/validation.py), so rejecting a typo costs no torch import.
`fedmia.validation.load_scenario` turns any problem — bytes that are not UTF-8, YAML syntax,
repeated keys, wrong types, unknown names, impossible plans — into a `ScenarioError` whose
lines read `FILE: key.path: what was expected, what was found`, so the CLI can print them and
exit with code 2 instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator



class ScenarioError(Exception):
    """One or more problems in a scenario file, each already phrased for a person."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {where}: {what}" for where, what in self.problems]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionSpec(Strict):
    kind: str = Field("iid", description="a partitioner (`fedmia list`): iid, members shuffled and split evenly; "
                      "dirichlet, label-skewed, each class split ~ Dir(alpha)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = skewed")


class SiteSpec(Strict):
    """One hospital of a multi-site audit. Its records never leave it: deployed, its SuperNode
    reads its own folder (`--node-config "data-path='...' site='NAME'"`); `path` is only for
    simulating the same federation on one machine."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the site's --node-config `site`")
    path: str | None = Field(None, description="this site's folder, for `fedmia run` (simulation) only")


class AuditorSpec(Strict):
    """What the auditor (the server side) holds of a multi-site audit, each a folder laid out
    like the sites' (`images/`, `masks/`). Which targets are members it does not know."""

    targets: str = Field(description="candidates it scores: records the sites shared for the audit, and others")
    population: str = Field(description="its prior data (thresholds, shadow and reference models)")
    test: str = Field(description="its own test set for utility (Dice/mIoU), never trained on")


class DataSpec(Strict):
    dataset: str = Field("shapes", description="a registered dataset (`fedmia list`)")
    image_size: int = Field(32, ge=16, le=1024, description="images are image_size × image_size pixels; "
                            "a multiple of 2**model.encoder_depth")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")
    members: int = Field(100, ge=1, description="records spread over the clients (the members)")
    heldout: int = Field(100, ge=1, description="never trained on: non-member targets and utility")
    population: int = Field(200, ge=1, description="the adversary's prior data, disjoint from both")
    public: int = Field(0, ge=0, description="public records the clients share (minmax reference, "
                        "distillation transfer set), disjoint from all the above; never targets")
    partition: PartitionSpec = Field(default_factory=PartitionSpec, description="how members are split over the clients")
    domain_shift: float = Field(0.0, ge=0, le=1, description="per-client acquisition shift (0 = none)")
    sites: list[SiteSpec] = Field(default_factory=list, description="a multi-site audit: one site per client, "
                                  "each with its own folder; members stay at the sites (empty: one pool)")
    auditor: AuditorSpec | None = Field(None, description="the server side's folders (with `sites`)")

    @property
    def multi_site(self) -> bool:
        return bool(self.sites)


class NormalizeSpec(Strict):
    mean: list[float] = Field(description="per input channel, subtracted from the [0, 1] image")
    std: list[float] = Field(description="per input channel, divides the centred image (each > 0)")

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("expected one positive value per input channel")
        return value


class ModelSpec(Strict):
    family: str = Field("smp", description="a registered model family (entry-point group `fedmia.models`): smp "
                        "(arch/encoder below), module (any nn.Module from `factory`), or a package's own")
    factory: str | None = Field(None, description="family module: 'package.module:callable', called as "
                                "callable(in_channels=, num_classes=, **options) and returning an nn.Module that maps "
                                "(N, C, H, W) images to (N, K, H, W) logits")
    options: dict[str, Any] = Field(default_factory=dict, description="the family's own options (smp: none; "
                                    "module: keyword arguments of the factory)")
    arch: str = Field("Unet", description="segmentation-models-pytorch architecture (`fedmia list`; family smp)")
    encoder: str = Field("resnet18", description="smp encoder name (family smp)")
    encoder_weights: str | None = Field(None, description="smp pretrained encoder weights, e.g. imagenet (downloaded "
                                        "to the Hugging Face cache, HF_HOME); default None: random initial weights")
    encoder_depth: int = Field(3, ge=1, le=5, description="encoder stages used; stages beyond it are removed")
    decoder_channels: list[int] | None = Field(
        None, description="Unet-style decoders only, one per stage; default smp's own (256, 128, 64, 32, 16), "
        "the last encoder_depth of them: a plain smp.Unet is encoder_depth 5 with all five"
    )
    head: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="softmax: the network outputs one logit per class; sigmoid: one logit channel for a "
        "binary mask, p(foreground) = sigmoid(logit) (smp's classes=1), read as the two classes [background, "
        "foreground]")
    in_channels: int | None = Field(None, ge=1, description="the network's fixed input channels, when its factory "
                                    "takes no in_channels; default: the data's (checked against it)")
    normalize: Literal["imagenet"] | NormalizeSpec | None = Field(
        None, description="the input normalisation the model was trained with, applied inside the model to every "
        "image (training, attacks, evaluation): imagenet (mean 0.485 0.456 0.406, std 0.229 0.224 0.225 on [0, 1] "
        "RGB) or {mean: [...], std: [...]}; default none: images reach the model as float32 in [0, 1]")
    norm: Literal["auto", "batch", "group"] = Field(
        "auto", description="auto: GroupNorm under local DP (per-sample gradients), else BatchNorm"
    )
    init: str | None = Field(None, description="start the federation from this checkpoint: a state-dict file "
                             "(torch.save(model.state_dict())) or a folder written by smp's save_pretrained; "
                             "a relative path is taken from where fedmia is run")

    @field_validator("init")
    @classmethod
    def _absolute_init(cls, value: str | None) -> str | None:
        """Absolute, so that Ray workers and SuperNodes started elsewhere open the same file."""
        return None if value is None else str(Path(value).expanduser().absolute())


class LRScheduleSpec(Strict):
    kind: Literal["constant", "cosine", "step"] = Field("constant", description="within one local run: constant; "
                                                        "cosine (per step, down to min_lr_ratio × lr); step (× gamma "
                                                        "every step_epochs epochs)")
    step_epochs: int = Field(1, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="step: the factor of each decay")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: the last step's lr as a share of the run's lr")
    round_decay: float = Field(1.0, gt=0, le=1, description="across rounds: round r's local runs start at "
                               "lr × round_decay**(r − 1) (the client reads r from the server's config)")


class AugmentSpec(Strict):
    flips: bool = Field(False, description="each record flipped left-right and up-down, each with probability 1/2")
    rot90: bool = Field(False, description="each record rotated by a random multiple of 90° (square images)")
    intensity: float = Field(0.0, ge=0, lt=1, description="each image × U(1 − a, 1 + a) + U(−a, a) (masks unchanged)")


class FederationSpec(Strict):
    clients: int = Field(4, ge=1, description="number of clients (partitions of the members)")
    clients_per_round: int | None = Field(None, ge=1, description="default: all clients")
    rounds: int = Field(3, ge=1, description="federated rounds")
    local_epochs: int = Field(1, ge=1, description="epochs of local training per round")
    batch_size: int = Field(16, ge=1, description="local training batch size")
    lr: float = Field(0.01, gt=0, description="local learning rate")
    optimizer: Literal["sgd", "adam"] = Field("adam", description="local optimiser")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay of the local optimiser")
    loss: Literal["ce", "dice", "dice+ce", "focal"] = Field(
        "ce", description="local training loss, per record (mean over its pixels) so DP-SGD can clip it: ce "
        "(cross-entropy), dice (per-image soft Dice), dice+ce (their sum), focal (smp's FocalLoss)")
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec, description="learning rate within a local "
                                        "run and across rounds")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="seeded per-record augmentation of local "
                                 "training (composes with DP-SGD and crop); reference models train with it too")
    pin_hyperparameters: bool = Field(
        False, description="clients ignore training config sent by the server (a defense)"
    )
    federated_evaluation: Literal["off", "sampled"] = Field(
        "off", description="clients also evaluate the global model on their own records: off (utility "
        "is measured on held-out data by the evaluator), or as many clients as train each round (their "
        "weighted loss, Dice and mIoU: metrics.json utility.rounds[].federated)")


class AttackSpec(BaseModel):
    """`name` picks a registered attack; any other key is that attack's own parameter."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="a registered attack (`fedmia list`)")
    label: str | None = Field(None, description="report name; lets one attack run with several settings")

    @property
    def key(self) -> str:
        return self.label or self.name

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ServerSpec(BaseModel):
    """`strategy` picks a registered strategy; any other key is that strategy's own parameter,
    validated against its parameter model."""

    model_config = ConfigDict(extra="allow")
    strategy: str = Field("fedavg", description="a registered server strategy (`fedmia list`)")

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Defenses(RootModel[dict[str, Any]]):
    """`defenses:` — each key names a registered defense (`fedmia list`), its value that
    defense's block. The schema knows no defense: fedmia/validation.py checks every block against
    its plug-in's `Params` and replaces it by the validated model. `scenario.defenses.KEY` reads
    a block (None when the defense is off)."""

    root: dict[str, Any] = Field(default_factory=dict, description="defense key -> its block (true for defaults)")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            return super().__getattr__(key)
        value = self.root.get(key)
        return None if value is None or value is False else value

    def keys(self) -> list[str]:
        return [k for k, v in self.root.items() if v is not None and v is not False]


class TargetSpec(Strict):
    members: int | None = Field(None, ge=1, description="default: as many as balance allows")
    nonmembers: int | None = Field(None, ge=1, description="default: same as members")


class EvaluationSpec(Strict):
    tpr_at_fpr: list[float] = Field(default_factory=lambda: [0.001, 0.01],
                                    description="FPR levels at which TPR is reported, each in (0, 1)")
    threshold_population_fpr: float = Field(
        0.1, gt=0, lt=1,
        description="threshold attacks call 'member' what beats this share of the population",
    )
    targets: TargetSpec = Field(default_factory=TargetSpec, description="how many member and non-member targets "
                                "the attacks score")
    ood: list[str] = Field(
        default_factory=lambda: ["heldout", "noise", "other-dataset", "scaled", "permuted", "optimised-fakes"],
        description="non-member sets whose false-positive rate is reported (OOD sets, `fedmia list`; [] to skip)",
    )
    ood_count: int = Field(100, ge=1, description="records per out-of-distribution set")
    ood_steps: int | None = Field(None, ge=1, le=1000, description=(
        "gradient steps per batch of optimised fakes (each a backward pass of the served model); default: "
        "sized so the fakes cost about what the run's own training did, 5 to 40 steps"))

    @field_validator("tpr_at_fpr")
    @classmethod
    def _fractions(cls, levels: list[float]) -> list[float]:
        for level in levels:
            if not 0 < level < 1:
                raise ValueError(f"each level must lie in (0, 1), found {level}")
        return levels


class CrashSpec(Strict):
    round: int = Field(ge=1, description="the round in which the client raises")
    client: int = Field(ge=0, description="partition-id")


class FaultSpec(Strict):
    """Injected failures: a crashed client raises during local training; the round goes on with
    the others and the failure is recorded in the transcript."""

    client_crash_prob: float = Field(0.0, ge=0, le=1, description="chance that a client raises in a round "
                                     "(seeded by seed, round, client)")
    client_delay_s: float = Field(0.0, ge=0, description="sleep before each local training")
    crash: list[CrashSpec] = Field(default_factory=list, description="deterministic crashes")


class RuntimeSpec(Strict):
    backend: Literal["ray"] = Field("ray", description="simulation backend (Flower's Ray backend only)")
    client_cpus: float = Field(1.0, gt=0, description="CPUs per client; 1 runs clients in parallel")
    client_gpus: float = Field(0.0, ge=0, description="GPUs per client; fractions share a device")
    total_cpus: int | None = Field(None, ge=1, description="CPUs Ray may use; default: all")
    max_parallel: int | None = Field(None, ge=1, description="at most this many clients train at once")
    ray_address: str | None = Field(None, description="join a running Ray cluster: 'auto' or 'host:port'")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA where present, else CPU")
    keep_transcript: Literal["all", "final", "none"] = Field(
        "all", description="which client replies to keep in the run folder"
    )
    cache_dir: str | None = Field(None, description="reference-model cache (default: $FEDMIA_CACHE or .fedmia-cache)")
    train_workers: int | None = Field(None, ge=1, description="processes that train the adversary's reference and "
                                      "shadow models at once, one torch thread each; default: the CPUs this process "
                                      "may use (1 on a GPU); 1 trains them one at a time in the run's own process")
    connect_timeout_s: float = Field(300.0, gt=0, description="how long the server waits for federation.clients "
                                     "SuperNodes to connect before it fails, naming the numbers")


class Scenario(Strict):
    name: str = Field(description="the scenario's name: the default run folder runs/NAME and metrics.json's `scenario`")
    description: str = Field("", description="free text, copied into metrics.json")
    seed: int = Field(0, description="seeds the data plan, model initialisation, client training and targets")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset and how its records are split")
    model: ModelSpec = Field(default_factory=ModelSpec, description="the segmentation model every client trains")
    federation: FederationSpec = Field(default_factory=FederationSpec, description="clients, rounds and the "
                                       "local training recipe")
    server: ServerSpec = Field(default_factory=ServerSpec, description="the server's strategy and its parameters")
    defenses: Defenses = Field(default_factory=Defenses, description="defense key -> its block (`fedmia list`); "
                               "none by default")
    attacks: list[AttackSpec] = Field(
        default_factory=lambda: [AttackSpec(name=n) for n in ("loss", "entropy", "confidence", "modified-entropy")],
        description="attacks to run: a name, or {name, label, <the attack's parameters>}",
    )
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="targets, FPR levels, OOD sets")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="where and how the simulation runs")
    faults: FaultSpec = Field(default_factory=FaultSpec, description="injected client failures and delays")

    @field_validator("attacks", mode="before")
    @classmethod
    def _names_are_specs(cls, value: Any) -> Any:
        """`- loss` is shorthand for `- {name: loss}`."""
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @property
    def attack_names(self) -> list[str]:
        """The names results are reported under (an attack's label, else its name)."""
        return [spec.key for spec in self.attacks]

    @property
    def clients_per_round(self) -> int:
        return self.federation.clients_per_round or self.federation.clients

    def resolved(self) -> dict[str, Any]:
        """Every field with its value, defaults filled in (what the run folder keeps)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False)

    def with_absolute_paths(self, base: str | Path | None = None, *, keep_site_paths: bool = True) -> "Scenario":
        """A copy whose data folders are absolute (relative ones taken from `base`, default the
        current directory): a scenario submitted with `flwr run` is opened by a ServerApp in
        another directory, maybe on another machine. Without `keep_site_paths`, the sites'
        simulation folders are dropped: deployed, each SuperNode names its own."""
        base = Path(base or Path.cwd())

        def absolute(path: str | None) -> str | None:
            return None if path is None else str((base / Path(path).expanduser()).resolve())

        raw = self.resolved()
        data = raw["data"]
        if self.data.dataset == "folder" and isinstance(data["options"].get("path"), str):
            data["options"]["path"] = absolute(data["options"]["path"])
        for site in data["sites"]:
            site["path"] = absolute(site["path"]) if keep_site_paths else None
        if data["auditor"] is not None:
            data["auditor"] = {key: absolute(value) for key, value in data["auditor"].items()}
        return Scenario.model_validate(raw)

    def canonical(self) -> str:
        """A stable text form, used as a cache key and to ship the scenario to clients."""
        return json.dumps(self.resolved(), sort_keys=True)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def describe_pydantic_error(error: dict[str, Any]) -> tuple[str, str]:
    where = _loc(error["loc"])
    kind = error["type"]
    found = error.get("input")
    if kind == "extra_forbidden":
        return where, "unknown key (check the spelling; `fedmia validate` lists none it ignores)"
    if kind == "missing":
        return where, "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return where, f"{message}, found {found!r}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}); a mapping names each key once",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


# A scenario is a few hundred values; YAML aliases can make a small file expand exponentially
# ("billion laughs"): refused before anything walks the expansion (pydantic, json.dumps would).
MAX_YAML_NODES = 200_000


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values in the document once every alias is expanded; an alias is the same node object, so
    memoising by identity keeps this linear in the file's size."""
    if node is None:
        return 0
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a recursive alias (a node inside itself) counts once, not forever
        if isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(v, memo) for v in node.value)
        memo[key] = min(memo[key], MAX_YAML_NODES + 1)
    return memo[key]


def read_yaml(path: str | Path) -> Any:
    """The YAML document of `path`; a ScenarioError for an unreadable file, bytes that are not
    UTF-8 text, a syntax error or a repeated key."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ScenarioError(source, [("(file)", f"cannot be read: {error.strerror or error}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScenarioError(source, [("(file)", f"expected UTF-8 text, found byte 0x{data[error.start]:02x} "
                                      f"at offset {error.start} (a binary file, or another encoding?)")]) from None
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            size = _expanded_size(node, {})
            if size > MAX_YAML_NODES:
                raise ScenarioError(source, [("(yaml)", f"the document expands to more than {MAX_YAML_NODES:,} "
                                              "values through its aliases (&anchor / *alias); expected a scenario "
                                              "of ordinary size")])
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        problem = getattr(error, "problem", None) or str(error)
        raise ScenarioError(source, [(where, f"YAML syntax error: {problem}")]) from None


def parse_schema(raw: Any, source: str = "<scenario>") -> Scenario:
    """The schema alone (types, ranges, unknown keys): no plug-in is imported. The checks that
    need the registries are in fedmia/validation.py."""
    if not isinstance(raw, dict):
        raise ScenarioError(source, [("(top level)", f"expected a mapping of keys, found {type(raw).__name__}")])
    try:
        return Scenario.model_validate(raw)
    except ValidationError as error:
        raise ScenarioError(source, [describe_pydantic_error(e) for e in error.errors()]) from None


def json_schema() -> dict[str, Any]:
    """The scenario's JSON Schema (what `fedmia schema` writes and editors complete and check
    keys against): `Scenario.model_json_schema()`, with `attacks` items accepting the `- loss`
    shorthand (a string) that the schema's before-validator turns into `{name: loss}`."""
    schema = Scenario.model_json_schema()
    attacks = schema["properties"]["attacks"]
    attacks["items"] = {"anyOf": [
        {"type": "string", "description": "shorthand for {name: ...}: a registered attack with its defaults"},
        attacks["items"],
    ]}
    return schema

