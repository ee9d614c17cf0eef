"""A multi-site audit: each hospital trains on its own `folder` of scans, the auditor holds its own.

The single-pool plan (fedmia/data/plan.py) splits one dataset into members, non-members and the
adversary's population, and so knows the ground truth. Here nobody does while the run lasts:
  sites    — one folder per client, read only by that client (deployed: by its SuperNode, from
             `--node-config "data-path='...' site='NAME'"`; simulated: `data.sites.N.path`);
  auditor  — the server side's folders: target candidates (records the sites shared for the
             audit, mixed with others), its population, and its test set for utility.
Membership ground truth comes afterwards from the sites: each writes a manifest of the records
it trained on, as SHA-256 digests of the image files (not the images), and
`fedmia evaluate RUN --manifests DIR` joins them with the run's saved scores. A target shared
for the audit must therefore be a byte-for-byte copy of the site's file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmia.data.datasets import load_dataset
from fedmia.data.folder import check_pair, folder_pairs
from fedmia.data.folder_options import DEFAULTS
from fedmia.data.records import DatasetInfo, Records

MANIFEST_FORMAT = "fedmia-site-manifest/1"


def site_info(data) -> DatasetInfo:
    """What every site and the auditor agreed on (channels, classes), from the scenario alone:
    a SuperNode builds the model without any other party's folder."""
    options = {**DEFAULTS, **data.options}
    if options["mask_mode"] == "binary":
        num_classes, names = 2, ["background", "foreground"]
    else:
        num_classes = int(options["num_classes"])
        names = ["background"] + [f"class{c}" for c in range(1, num_classes)]
    return DatasetInfo(name="folder", in_channels=int(options["channels"]), num_classes=num_classes,
                       class_names=names)


def load_folder_records(data, path: str | Path) -> Records:
    """Every record of the folder at `path`, read with the scenario's folder options; masks are
    checked against the agreed classes (a site's folder may not add one)."""
    options = {**data.options, "path": str(path)}
    if options.get("mask_mode", DEFAULTS["mask_mode"]) == "index":
        options["num_classes"] = site_info(data).num_classes
    records, _ = load_dataset("folder", records=max(len(folder_pairs(options)), 1),
                              image_size=data.image_size, seed=0, options=options)
    return records


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_digests(data, path: str | Path) -> dict[str, str]:
    """Record id (as the loader names it) → SHA-256 of its image file, for the folder at `path`."""
    return _digests({**data.options, "path": str(path)})


def _digests(options: dict) -> dict[str, str]:
    return {f"folder:{stem}": file_digest(image) for stem, image, _ in folder_pairs(options)}


def write_manifest(folder: Path, site: str, out: Path, images: str = "images", masks: str = "masks") -> dict:
    """A site's manifest: the digests of every record in its folder (what its client trains
    on: the same pairing rules as the loader), no image and no file name."""
    from fedmia.io import write_json_atomic

    digests = _digests({"path": str(folder), "images": images, "masks": masks})
    manifest = {"format": MANIFEST_FORMAT, "site": site, "digest": "sha256 of the image file",
                "records": sorted(digests.values())}
    write_json_atomic(Path(out), manifest)
    return manifest


class ManifestError(ValueError):
    """A manifest folder that cannot give a defensible ground truth (message names the file);
    a usage problem: exit 2."""

    exit_code = 2


def read_manifests(folder: Path, site_names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(digest → site index, site → records) from every `*.json` in `folder`. Every site of the
    scenario must have exactly one manifest: a missing one would silently turn its members into
    non-members."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder of site manifests")
    owner: dict[str, int] = {}
    seen: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for file in sorted(folder.glob("*.json")):
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ManifestError(f"{file}: not a JSON site manifest ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{file}: format: expected {MANIFEST_FORMAT!r} (written by `fedmia manifest`)")
        site, records = manifest.get("site"), manifest.get("records")
        if site not in site_names:
            raise ManifestError(f"{file}: site: expected one of the scenario's sites {site_names}, found {site!r}")
        if site in seen:
            raise ManifestError(f"{file}: site: {site!r} already has a manifest ({seen[site]})")
        if not isinstance(records, list) or not all(isinstance(r, str) and len(r) == 64 for r in records):
            raise ManifestError(f"{file}: records: expected a list of SHA-256 hex digests")
        seen[site] = file
        counts[site] = len(set(records))
        for record in records:
            if record in owner and owner[record] != site_names.index(site):
                raise ManifestError(f"{file}: records: {record[:12]}… is also in the manifest of site "
                                    f"{site_names[owner[record]]!r}; a record has one owner")
            owner[record] = site_names.index(site)
    missing = [name for name in site_names if name not in seen]
    if missing:
        raise ManifestError(f"{folder}: no manifest for site(s) {missing}; expected one per site of the scenario")
    return owner, {name: counts[name] for name in site_names}


@dataclass(frozen=True)
class SiteLayout:
    """The client side of a multi-site plan: the agreed dataset info and, for simulation, each
    site's folder. A deployed client passes its own `data-path` instead."""

    info: DatasetInfo
    data: object  # the scenario's DataSpec
    names: tuple[str, ...]
    paths: tuple[str | None, ...]

    @classmethod
    def from_data(cls, data) -> "SiteLayout":
        return cls(site_info(data), data, tuple(s.name for s in data.sites), tuple(s.path for s in data.sites))

    @property
    def clients(self) -> int:
        return len(self.names)

    def load_client(self, partition_id: int, path: str | None = None) -> tuple[Records, None]:
        path = path or self.paths[partition_id]
        if path is None:
            raise ValueError(f"site {self.names[partition_id]!r} has no folder: give its SuperNode "
                             "--node-config \"data-path='...'\" (or data.sites.N.path to simulate it)")
        return load_folder_records(self.data, path), None


def build_site_plan(scenario):
    """The server's side of a multi-site plan: its own folders, no member record, no ledger."""
    from fedmia.data.federation import FederationPlan

    data, auditor = scenario.data, scenario.data.auditor
    layout = SiteLayout.from_data(data)
    test = load_folder_records(data, auditor.test)
    population = load_folder_records(data, auditor.population)
    targets = load_folder_records(data, auditor.targets)
    if targets.groups is not None:  # NIfTI: a scan is the patient, one slice of it the target
        targets = one_slice_per_scan(targets, scenario.seed)
    return FederationPlan(layout.info, [], test, population, targets, None, None, layout)


def one_slice_per_scan(records: Records, seed: int) -> Records:
    """One record drawn from each group (scan), as the single-pool plan draws its targets: every
    target an independent patient, so intervals over targets are intervals over patients."""
    rng = np.random.default_rng([seed, 17])
    picks = [int(rng.choice(np.flatnonzero(records.groups == g))) for g in np.unique(records.groups)]
    return records.subset(np.asarray(picks))


def scan_of(record_id: str) -> str:
    """The file a record comes from: a NIfTI slice's id is `folder:STEM/SLICE`, a 2-D image's `folder:STEM`."""
    return record_id.split("/", 1)[0]


def check_site_folders(scenario) -> None:
    """Simulated (or loopback) sites: every site's files paired and readable, before any training.
    Never on the server side of a deployment: the sites' folders are on their own machines."""
    for site in scenario.data.sites:
        if site.path is None:
            raise ValueError(f"site {site.name!r} has no folder (data.sites.N.path): a multi-site audit on "
                             "this machine needs every site's folder here; deployed, each SuperNode names its own")
        try:
            for _, image, mask in folder_pairs({**scenario.data.options, "path": site.path}):
                check_pair(image, mask)
        except ValueError as error:
            raise ValueError(f"site {site.name!r}: {error}") from None


def target_digests(scenario) -> dict[str, str]:
    """Target id → digest: what the evaluator joins with the sites' manifests."""
    return record_digests(scenario.data, scenario.data.auditor.targets)


def ledger_from_manifests(target_digests_: dict[str, str], owner: dict[str, int], ids) -> dict[str, int | str]:
    from fedmia.data.federation import NON_MEMBER

    # a slice's membership is its scan's: the manifest digests files, not slices
    return {rid: owner.get(target_digests_[scan_of(rid)], NON_MEMBER) for rid in np.asarray(ids).tolist()}


def write_example_audit(root: Path, sites: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c"),
                        per_site: int = 40, shared: int = 10, others: int = 30, population: int = 60,
                        test: int = 30, size: tuple[int, int] = (72, 64), seed: int = 0) -> Path:
    """A synthetic multi-site audit laid out as `scenarios/multi-site.yaml` expects, nothing
    downloaded: `root/<site>/` (each hospital's frames), and the auditor's `root/auditor/targets`
    (`shared` byte-for-byte copies from each site — what a site shares for the audit — plus
    `others` frames no site trained on), `root/auditor/population`, `root/auditor/test`."""
    import shutil

    from fedmia.data.folder import write_example_folder

    root = Path(root)
    targets = root / "auditor" / "targets"
    for k, site in enumerate(sites):
        folder = write_example_folder(root / site, per_site, size=size, seed=seed * 100 + k + 1)
        for stem in sorted(p.stem for p in (folder / "images").iterdir())[:shared]:  # shared for the audit
            for part in ("images", "masks"):
                (targets / part).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / part / f"{stem}.jpg", targets / part / f"{site}-{stem}.jpg")
    outside = write_example_folder(root / "auditor" / "outside", others, size=size, seed=seed * 100 + 90)
    for part in ("images", "masks"):  # frames no site has: the non-member targets
        (targets / part).mkdir(parents=True, exist_ok=True)
        for file in sorted((outside / part).iterdir()):
            shutil.copyfile(file, targets / part / f"outside-{file.name}")
    shutil.rmtree(outside)
    write_example_folder(root / "auditor" / "population", population, size=size, seed=seed * 100 + 91)
    write_example_folder(root / "auditor" / "test", test, size=size, seed=seed * 100 + 92)
    return root
