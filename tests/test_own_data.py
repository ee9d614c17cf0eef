"""Your own scans in the formats hospitals keep them: NIfTI volumes (a patient, not a slice, is
the member), 16-bit greyscale with an intensity window, colour-coded masks; `fedmia init`'s
scenario for each; every bad file named before training, also through `fedmia validate`.
Real files throughout: nibabel writes the volumes, PIL the images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from fedmia.data.datasets import load_dataset
from fedmia.init_scenario import inspect_folder, write_example_volumes, write_scenario

CLI = [sys.executable, "-m", "fedmia.cli"]
PALETTE = {"#000000": 0, "#ff0000": 1, "#00ff00": 2}


def _scan(record_id: str) -> str:
    """'folder:case_003/0005' -> 'folder:case_003': the volume a slice came from."""
    return record_id.split("/")[0]


def _validate_in_process(path: Path):
    from fedmia.cli import app

    return CliRunner().invoke(app, ["validate", str(path)])


def _write_16bit(root: Path, count: int = 10) -> Path:
    """16-bit greyscale scans (values 1000..3000, a bright square lesion) of varying size, as PNG
    and TIFF, with binary 8-bit masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        h, w = 40 + 4 * (i % 3), 48
        image = np.full((h, w), 1000, dtype=np.uint16)
        image[:, w // 2:] = 2000
        mask = np.zeros((h, w), dtype=np.uint8)
        y, x = 8 + i % 5, 6 + i % 7
        image[y:y + 10, x:x + 10] = 3000
        mask[y:y + 10, x:x + 10] = 255
        Image.fromarray(image).save(root / "images" / f"scan{i:02d}.{'tif' if i % 2 else 'png'}")
        Image.fromarray(mask).save(root / "masks" / f"scan{i:02d}.png")
    return root


def _write_palette(root: Path, count: int = 10) -> Path:
    """RGB images with colour-coded masks: black background, red class 1, green class 2."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image = np.full((36, 36, 3), 60, dtype=np.uint8)
        mask = np.zeros((36, 36, 3), dtype=np.uint8)
        mask[4:14, 4 + i:14 + i] = (255, 0, 0)
        mask[20:30, 20:30] = (0, 255, 0)
        image[mask.any(axis=2)] = (200, 120, 90)
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    return root


def _plan_of(path: Path):
    from fedmia.data.plan import build_plan
    from fedmia.validation import load_scenario

    return build_plan(load_scenario(path))


# ---------------------------------------------------------------- NIfTI volumes


def test_volumes_are_read_slice_by_slice_and_grouped_by_scan(tmp_path):
    root = write_example_volumes(tmp_path / "ct", volumes=3, size=(24, 20, 6))
    options = {"path": str(root), "images": "imagesTr", "masks": "labelsTr", "channels": 1,
               "window": [-100, 400]}
    records, info = load_dataset("folder", records=3, image_size=16, seed=0, options=options)
    assert len(records) == 18 and records.images.shape == (18, 1, 16, 16)
    assert records.ids[0] == "folder:case_000/0000" and records.ids[-1] == "folder:case_002/0005"
    assert records.groups.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert (info.in_channels, info.num_classes) == (1, 2)
    assert records.images[:, :, 0, 0].max() == 0.0  # air at -1000 HU lies below the window
    assert 0.2 < np.median(records.images[:, 0, 8, 8]) < 0.4  # tissue ~40 HU: (40+100)/500

    # `records` and `rows` count scans: a client loads exactly the pool's slices of its scans
    part, _ = load_dataset("folder", records=3, image_size=16, seed=0, options=options, rows=np.array([2, 0]))
    expected = np.concatenate([np.flatnonzero(records.groups == 2), np.flatnonzero(records.groups == 0)])
    assert list(part.ids) == list(records.ids[expected]) and part.groups.tolist() == [2] * 6 + [0] * 6
    np.testing.assert_array_equal(part.images, records.images[expected])

    every, _ = load_dataset("folder", records=3, image_size=16, seed=0, options={**options, "slices": 4, "axis": 0})
    assert [i.split("/")[1] for i in every.ids[:6]] == ["0000", "0004", "0008", "0012", "0016", "0020"]
    lesion, _ = load_dataset("folder", records=3, image_size=16, seed=0,
                             options={**options, "slices": "foreground"})
    assert 3 <= len(lesion) < 18 and all(m.any() for m in lesion.masks)
    three, info = load_dataset("folder", records=1, image_size=16, seed=0,
                               options={**options, "channels": 3, "mask_mode": "index"})
    assert three.images.shape[1] == 3 and info.num_classes == 2
    with pytest.raises(ValueError, match="has 3 image/label volumes, but 4 records were asked for"):
        load_dataset("folder", records=4, image_size=16, seed=0, options=options)


@pytest.mark.parametrize("clients", [2, 3])
def test_the_plan_keeps_every_scan_with_one_client_and_one_side(tmp_path, clients):
    root = write_example_volumes(tmp_path / "ct", volumes=12, size=(32, 32, 8), seed=clients)
    out = tmp_path / "audit.yaml"
    text, commands = write_scenario(root, out)
    assert commands == [f"fedmia validate {out}", f"fedmia run {out} --out runs/ct"]
    raw = yaml.safe_load(text)
    assert raw["data"]["options"]["images"] == "imagesTr" and raw["data"]["options"]["window"] == "percentile"
    assert raw["data"]["members"] + raw["data"]["heldout"] + raw["data"]["population"] == 12
    raw["federation"]["clients"] = clients
    out.write_text(yaml.safe_dump(raw))
    plan = _plan_of(out)

    sides = {"heldout": plan.heldout, "population": plan.population,
             **{f"client {k}": c for k, c in enumerate(plan.clients)}}
    where: dict[str, str] = {}
    for side, records in sides.items():
        for record_id in records.ids:
            scan = _scan(record_id)
            assert where.setdefault(scan, side) == side, f"{scan} in {where[scan]} and in {side}"
    assert len(where) == 12 and sum(len(c) for c in plan.clients) == 8 * raw["data"]["members"]
    owners: dict[str, set] = {}
    for record_id, owner in plan.ledger.owner.items():  # membership is the scan's
        owners.setdefault(_scan(record_id), set()).add(owner)
    assert all(len(o) == 1 for o in owners.values())
    # one target per patient, members and non-members alike; init makes every scan of both a target
    scans = [_scan(i) for i in plan.targets.ids]
    assert len(scans) == len(set(scans)) == raw["data"]["members"] + raw["data"]["heldout"]
    assert plan.ledger.is_member(plan.targets.ids).sum() == raw["data"]["members"]
    for k in range(clients):  # what a Ray worker loads is the plan's share, slice for slice
        own, _ = plan.layout.load_client(k)
        assert list(own.ids) == list(plan.clients[k].ids)
        np.testing.assert_array_equal(own.images, plan.clients[k].images)


def test_dirichlet_partition_and_public_records_draw_whole_scans(tmp_path):
    root = write_example_volumes(tmp_path / "ct", volumes=10, size=(16, 16, 4))
    out = tmp_path / "audit.yaml"
    text, _ = write_scenario(root, out)
    raw = yaml.safe_load(text)
    raw["data"].update(members=5, heldout=2, population=1, public=2, partition={"kind": "dirichlet", "alpha": 1.0},
                       domain_shift=0.5, image_size=16)
    raw["evaluation"].pop("targets")  # init's counts were for its own split
    out.write_text(yaml.safe_dump(raw))
    plan = _plan_of(out)
    groups = [{_scan(i) for i in r.ids} for r in (*plan.clients, plan.heldout, plan.population, plan.public)]
    assert sum(len(g) for g in groups) == 10 and len(set().union(*groups)) == 10
    own, public = plan.layout.load_client(0)
    np.testing.assert_array_equal(own.images, plan.clients[0].images)
    np.testing.assert_array_equal(public.images, plan.public.images)


# ---------------------------------------------------------------- 16-bit images, windows


def test_sixteen_bit_images_are_windowed(tmp_path):
    root = _write_16bit(tmp_path / "mr")
    info = inspect_folder(root)
    assert info["high_bit"] and info["channels"] == 1 and info["mask_mode"] == "binary"
    assert info["count"] == 10 and info["sizes"] == {"min": [48, 40], "max": [48, 48]}

    options = {"path": str(root), "channels": 1}
    raw, _ = load_dataset("folder", records=10, image_size=48, seed=0, options={**options, "window": [1000, 3000]})
    left, right = raw.images[0, 0, 30, 2], raw.images[0, 0, 30, 40]  # 1000 and 2000 in the file
    assert left == pytest.approx(0.0, abs=1e-6) and right == pytest.approx(0.5, abs=1e-3)
    assert raw.images.max() == pytest.approx(1.0)
    narrow, _ = load_dataset("folder", records=10, image_size=48, seed=0, options={**options, "window": [1500, 2500]})
    assert narrow.images[0, 0, 30, 2] == 0.0 and narrow.images[0, 0, 30, 40] == pytest.approx(0.5, abs=1e-3)
    for window in ("percentile", {"percentile": [5, 95]}, None):  # per image; None: 1st-99th percentile
        stretched, _ = load_dataset("folder", records=10, image_size=32, seed=0, options={**options, "window": window})
        assert stretched.images.min() == 0.0 and stretched.images.max() == pytest.approx(1.0)
    assert set(np.unique(raw.masks)) == {0, 1} and raw.masks.sum() > 0

    out = tmp_path / "audit.yaml"
    text, _ = write_scenario(root, out)
    assert yaml.safe_load(text)["data"]["options"]["window"] == "percentile"
    assert yaml.safe_load(text)["data"]["image_size"] == 32  # a power of two within 40x48
    _plan_of(out)

    for bad in ([3000, 1000], "hist", {"percentile": [50, 101]}, [1, "x"]):
        with pytest.raises(ValueError, match=r"folder: window: expected \[lo, hi\]"):
            load_dataset("folder", records=1, image_size=16, seed=0, options={**options, "window": bad})
    with pytest.raises(ValueError, match="axis slice NIfTI volumes"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={**options, "axis": 1})


# ---------------------------------------------------------------- colour-coded masks


def test_grey_jpeg_masks_are_binary_not_a_colour_code(tmp_path):
    from fedmia.data.folder import write_example_folder

    root = write_example_folder(tmp_path / "kvasir", 4, size=(40, 36))
    for mask in (root / "masks").iterdir():  # Kvasir-SEG ships its masks as RGB JPEGs
        Image.open(mask).convert("RGB").save(mask, quality=75)
    info = inspect_folder(root)
    assert (info["mask_mode"], info["palette"], info["channels"]) == ("binary", None, 3)


def test_palette_masks_map_colours_to_classes(tmp_path):
    root = _write_palette(tmp_path / "derm")
    info = inspect_folder(root)
    # black is background, the other colours numbered in hex order (the user renames as needed)
    assert info["palette"] == {"#000000": 0, "#00ff00": 1, "#ff0000": 2}
    assert info["mask_mode"] == "index" and info["channels"] == 3
    records, data_info = load_dataset("folder", records=10, image_size=36, seed=0,
                                      options={"path": str(root), "palette": PALETTE, "mask_mode": "index"})
    assert data_info.num_classes == 3
    assert records.masks[0, 5, 5] == 1 and records.masks[0, 25, 25] == 2 and records.masks[0, 33, 2] == 0
    small, _ = load_dataset("folder", records=10, image_size=16, seed=0,  # nearest neighbour: no new class
                            options={"path": str(root), "palette": PALETTE, "mask_mode": "index"})
    assert set(np.unique(small.masks)) == {0, 1, 2}

    out = tmp_path / "audit.yaml"
    text, _ = write_scenario(root, out)
    assert "'#ff0000': 2" in text  # quoted: `#` would start a YAML comment
    plan = _plan_of(out)
    assert plan.info.num_classes == 3

    with pytest.raises(ValueError, match="mask_mode 'binary' has classes 0 and 1; set mask_mode: index"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(root), "palette": PALETTE})
    with pytest.raises(ValueError, match="palette: colour 'red'"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(root), "palette": {"red": 1}})


# ---------------------------------------------------------------- bad files, named before training


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a scenario `fedmia init` wrote for a good folder that was then broken, the
    message expected, naming the file)."""
    cases = {}
    broken = write_example_volumes(tmp_path / "broken", volumes=6, size=(16, 16, 4))
    scenario = tmp_path / "broken.yaml"
    write_scenario(broken, scenario)
    (broken / "imagesTr" / "case_002.nii.gz").write_bytes(b"\x1f\x8b not really gzip, not a NIfTI volume")
    cases["broken volume"] = (scenario, r"image '.*case_002\.nii\.gz' cannot be read as a NIfTI volume")

    unlabelled = write_example_volumes(tmp_path / "unlabelled", volumes=6, size=(16, 16, 4))
    scenario = tmp_path / "unlabelled.yaml"
    write_scenario(unlabelled, scenario)
    (unlabelled / "labelsTr" / "case_004.nii.gz").unlink()
    cases["image without label"] = (scenario, r"image 'case_004\.nii\.gz' has no label in .*labelsTr")

    colours = _write_palette(tmp_path / "colours", count=6)
    scenario = tmp_path / "colours.yaml"
    write_scenario(colours, scenario)
    mask = np.asarray(Image.open(colours / "masks" / "img03.png")).copy()
    mask[7, 30] = (0, 0, 255)
    Image.fromarray(mask).save(colours / "masks" / "img03.png")
    cases["colour not in the palette"] = (
        scenario, r"mask '.*img03\.png' has colour #0000ff at pixel \(x=30, y=7\), which the palette does not map")
    return cases


def test_bad_files_are_named_by_the_loader_and_by_fedmia_validate(tmp_path):
    cases = _bad_inputs(tmp_path)
    for name, (scenario, message) in cases.items():
        options = yaml.safe_load(scenario.read_text())["data"]["options"]
        with pytest.raises(ValueError, match=message):
            load_dataset("folder", records=6, image_size=16, seed=0, options=options)
        result = _validate_in_process(scenario)
        assert result.exit_code == 2, (name, result.output)
    # one through a real process: exit code 2 and `FILE: data: <message naming the file>` on stderr
    scenario, message = cases["broken volume"]
    done = subprocess.run([*CLI, "validate", str(scenario)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"{scenario}: data: folder: image '") and "case_002.nii.gz" in done.stderr


def test_folder_and_path_problems_are_named(tmp_path):
    file = tmp_path / "scans.nii.gz"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match=f"path '{file}' is a file"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(file)})
    with pytest.raises(ValueError, match="is a file"):
        inspect_folder(file)
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    with pytest.raises(ValueError, match="no images found in .*imagesTr"):
        inspect_folder(empty)
    with pytest.raises(ValueError, match="looks like the Medical Segmentation Decathlon layout"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(empty)})
    with pytest.raises(ValueError, match="expected the subfolders imagesTr/ and labelsTr/"):
        inspect_folder(tmp_path)

    volumes = write_example_volumes(tmp_path / "ct", volumes=2, size=(16, 16, 4))
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.zeros((16, 12, 4), dtype=np.uint8), np.eye(4)),
                 str(volumes / "labelsTr" / "case_001.nii.gz"))
    options = {"path": str(volumes), "images": "imagesTr", "masks": "labelsTr"}
    with pytest.raises(ValueError, match=r"label '.*case_001\.nii\.gz' has shape \(16, 12, 4\) but its image"):
        load_dataset("folder", records=2, image_size=16, seed=0, options=options)
    with pytest.raises(ValueError, match="palette reads colour-coded 2-D masks"):
        load_dataset("folder", records=1, image_size=16, seed=0,
                     options={**options, "palette": PALETTE, "mask_mode": "index"})
    mr = write_example_volumes(tmp_path / "mr", volumes=1, size=(16, 16, 4))  # two MR sequences in one file
    sequences = np.stack([np.full((16, 16, 4), 10, np.int16), np.full((16, 16, 4), 20, np.int16)], axis=-1)
    nibabel.save(nibabel.Nifti1Image(sequences, np.eye(4)), str(mr / "imagesTr" / "case_000.nii.gz"))
    options = {"path": str(mr), "images": "imagesTr", "masks": "labelsTr", "window": [0, 40]}
    with pytest.raises(ValueError, match=r"image '.*case_000\.nii\.gz' is 4-D \(16, 16, 4, 2\).*set option modality"):
        load_dataset("folder", records=1, image_size=16, seed=0, options=options)
    second, _ = load_dataset("folder", records=1, image_size=16, seed=0, options={**options, "modality": 1})
    assert np.allclose(second.images, 0.5)
    assert inspect_folder(mr)["modalities"] == 2

    out = tmp_path / "taken.yaml"
    out.write_text("name: mine\n")
    with pytest.raises(FileExistsError, match="already exists"):
        write_scenario(volumes, out)


# ---------------------------------------------------------------- one audit, end to end


# slow: the volumes' reading, grouping and planning are tested above without Ray
@pytest.mark.slow
def test_a_nifti_audit_runs_end_to_end(tmp_path):
    root = write_example_volumes(tmp_path / "ct", volumes=9, size=(32, 32, 8))
    scenario = tmp_path / "audit.yaml"
    made = subprocess.run([*CLI, "init", str(root), "--out", str(scenario)], capture_output=True, text=True,
                          timeout=120)  # as a user types it
    assert made.returncode == 0 and f"fedmia validate {scenario}" in made.stdout, made.stderr
    again = subprocess.run([*CLI, "init", str(root), "--out", str(scenario)], capture_output=True, text=True)
    assert again.returncode == 2 and "give --force" in again.stderr  # an existing file is kept
    raw = yaml.safe_load(scenario.read_text())
    raw["federation"].update(clients=2, rounds=1, local_epochs=1)
    raw["attacks"] = ["loss"]
    raw["evaluation"]["ood"] = []
    scenario.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    done = subprocess.run([*CLI, "run", str(scenario), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "metrics.json").is_file()
    ledger = yaml.safe_load((out / "ledger.json").read_text())["owner"]
    assert len({_scan(i) for i in ledger}) == 9  # every slice of every scan, owned as its scan


def test_audit_model_audits_a_checkpoint_trained_by_a_plain_pytorch_loop(tmp_path):
    """A model trained outside fedmia — a plain PyTorch loop on one hospital's folder, saved as a
    state dict — audited with the auditor's folders and that hospital's manifest: the same run
    folder as a federation's (finished, report, intervals), membership joined at once. A
    checkpoint of another architecture, a manifest missing, a scenario without the auditor's
    folders: each one line, exit 2. (That the figures equal those of the same model reached
    through a federation: tests/test_deployment.py's multi-site test.)"""
    import json

    import torch

    from fedmia.cli import app
    from fedmia.data.sites import load_folder_records, write_example_audit
    from fedmia.models import build_model
    from fedmia.runfolder import state
    from fedmia.scenario import Scenario

    data = write_example_audit(tmp_path / "data", sites=("trainer",), per_site=12, shared=4, others=6,
                               population=8, test=6, size=(40, 36))
    raw = {"name": "trained-elsewhere", "seed": 0,
           "data": {"dataset": "folder", "image_size": 32, "options": {"channels": 3, "mask_mode": "binary"},
                    "sites": [{"name": "trainer"}],
                    "auditor": {k: str(data / "auditor" / k) for k in ("targets", "population", "test")}},
           "model": {"arch": "Unet", "encoder": "resnet18", "encoder_depth": 2},
           "federation": {"clients": 1, "rounds": 1, "local_epochs": 1, "batch_size": 4},
           "attacks": ["loss", "entropy", {"name": "lira-offline", "aggregation": "auto"}],
           "evaluation": {"tpr_at_fpr": [0.1], "ood": ["heldout", "noise"], "ood_count": 3}}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(raw))
    scenario = Scenario.model_validate(raw)

    # the hospital's own training: plain PyTorch, nothing of fedmia's training code
    records = load_folder_records(scenario.data, data / "trainer")
    model = build_model(scenario.model, in_channels=3, num_classes=2, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    images, masks = torch.as_tensor(records.images), torch.as_tensor(records.masks).long()
    model.train()
    for _ in range(15):
        for start in range(0, len(images), 4):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[start:start + 4]), masks[start:start + 4]).backward()
            optimizer.step()
    torch.save(model.state_dict(), tmp_path / "trained.pt")

    runner = CliRunner()
    made = runner.invoke(app, ["manifest", str(data / "trainer"), "--site", "trainer",
                               "--out", str(tmp_path / "manifests" / "trainer.json")])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["audit-model", str(tmp_path / "trained.pt"), str(tmp_path / "audit.yaml"),
                                 "--manifests", str(tmp_path / "manifests"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert state(tmp_path / "run") == "finished" and (tmp_path / "run" / "report.md").stat().st_size > 0
    assert metrics["setup"]["targets"] == {"members": 4, "nonmembers": 6}  # the 4 the trainer shared
    for name in ("loss", "entropy", "lira-offline"):  # lira-offline: reference models with the recipe
        row = metrics["attacks"][name]
        assert 0 <= row["ci"]["auc"][0] <= row["auc"] <= row["ci"]["auc"][1] <= 1
    assert set(metrics["ood_at_tpr50"]["loss"]) == {"heldout", "noise"}
    # what the adversary chose on its own models survives the join with the manifests
    assert metrics["attacks"]["lira-offline"]["chosen"]["aggregation"] in ("mean", "pixel-sum")
    assert 0 <= metrics["utility"]["dice"] <= 1 and len(metrics["utility"]["rounds"]) == 1
    saved = yaml.safe_load((tmp_path / "run" / "scenario.yaml").read_text())
    assert saved["model"]["init"] == str((tmp_path / "trained.pt").resolve())  # what was audited

    deeper = build_model(scenario.model.model_copy(update={"encoder_depth": 3}), in_channels=3, num_classes=2)
    torch.save(deeper.state_dict(), tmp_path / "other.pt")
    for args, expected in [
        (["audit-model", str(tmp_path / "other.pt"), str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "x")],
         "does not fit"),
        (["audit-model", str(tmp_path / "trained.pt"), str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "y"),
          "--manifests", str(tmp_path / "nothing")], "nothing"),
    ]:
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and expected in refused.output, refused.output
    del raw["data"]["auditor"], raw["data"]["sites"]
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(raw))
    refused = runner.invoke(app, ["audit-model", str(tmp_path / "trained.pt"), str(tmp_path / "pool.yaml")])
    assert refused.exit_code == 2 and "data.auditor" in refused.output, refused.output


# ---------------------------------------------------------------- an auditor's first hour


def _decathlon(tmp_path: Path, volumes: int = 16) -> Path:
    """A Decathlon-style folder as a hospital exports it: `dataset.json` listing the valid pairs,
    a macOS `._` file, and one image without its label (left out of the listing, as the
    Decathlon lists only labelled training scans)."""
    import json

    root = write_example_volumes(tmp_path / "Task09_Spleen", volumes=volumes, size=(32, 32, 8))
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "labelsTr" / f"case_{volumes - 1:03d}.nii.gz").unlink()  # an image without its label
    training = [{"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
                for i in range(volumes - 1)]
    (root / "dataset.json").write_text(json.dumps({"name": "Spleen", "modality": {"0": "CT"}, "training": training}))
    return root


def test_init_reads_dataset_json_skips_unpaired_and_targets_every_member(tmp_path):
    """`init` on a Decathlon-style folder: the listed pairs only (the stray `._` file and the
    unlabelled image never read); without the listing, the unlabelled image is skipped and named
    instead of stopping init; every member scan is a target; the FPR levels are ones its own
    non-member count supports (it chose 10% with 7 non-members, then flagged its own choice);
    members counted in scans, the scenario's unit."""
    root = _decathlon(tmp_path)
    out = tmp_path / "audit.yaml"
    text, _ = write_scenario(root, out)
    raw = yaml.safe_load(text)
    assert raw["data"]["options"]["listing"] == "dataset.json" and "unpaired" not in raw["data"]["options"]
    units = raw["data"]["members"] + raw["data"]["heldout"] + raw["data"]["population"]
    assert units == 15  # 16 scans, one without its label
    assert raw["evaluation"]["targets"] == {"members": raw["data"]["members"], "nonmembers": raw["data"]["heldout"]}
    heldout = raw["data"]["heldout"]
    assert all(heldout * level >= 1 for level in raw["evaluation"]["tpr_at_fpr"])
    plan = _plan_of(out)
    member_scans = {_scan(i) for c in plan.clients for i in c.ids}
    target_scans = {_scan(i) for i in plan.targets.ids}
    assert member_scans <= target_scans and len(member_scans) == raw["data"]["members"]  # every member scan

    (root / "dataset.json").unlink()  # no listing: the unlabelled image is skipped and named
    again = tmp_path / "again.yaml"
    text, _ = write_scenario(root, again)
    raw = yaml.safe_load(text)
    assert raw["data"]["options"]["unpaired"] == "skip"
    assert "1 image(s) without a label, skipped: case_015.nii.gz" in text
    assert _validate_in_process(again).exit_code == 0
    (root / "labelsTr" / "case_003.nii.gz").unlink()  # a second one, after init: still skipped, not fatal
    assert _validate_in_process(again).exit_code == 0


def test_init_for_model_splits_the_folder_for_audit_model(tmp_path):
    """`init --for-model`: a training site and the auditor's folders (every training scan among
    the targets, byte for byte), and a multi-site scenario that audit-model reads; NIfTI targets
    are one slice per scan, and a slice's membership is its scan's."""
    from fedmia.cli import app
    from fedmia.data.plan import build_plan
    from fedmia.data.sites import file_digest, scan_of
    from fedmia.validation import load_scenario

    root = _decathlon(tmp_path)
    out = tmp_path / "model-audit.yaml"
    made = CliRunner().invoke(app, ["init", str(root), "--for-model", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert "fedmia audit-model trained.pt" in made.output
    layout = tmp_path / "task09-spleen-audit"
    trainer = sorted(p.name for p in (layout / "sites" / "trainer" / "images").iterdir())
    targets = sorted(p.name for p in (layout / "auditor" / "targets" / "images").iterdir())
    assert set(trainer) < set(targets) and len(trainer) >= 5
    for name in trainer:  # shared for the audit: byte-for-byte copies
        assert file_digest(layout / "auditor" / "targets" / "images" / name) == \
            file_digest(layout / "sites" / "trainer" / "images" / name)
    scenario = load_scenario(out)
    assert scenario.data.multi_site and scenario.model.head == "sigmoid" and scenario.model.encoder_depth == 5
    plan = build_plan(scenario)
    assert len(plan.targets) == len(targets)  # one slice per scan
    assert len({scan_of(i) for i in plan.targets.ids}) == len(targets)

    # a sites/auditor layout (this one, or a consortium's own) is read by init, not refused
    again = tmp_path / "layout.yaml"
    made = CliRunner().invoke(app, ["init", str(layout), "--out", str(again)])
    assert made.exit_code == 0, made.output
    assert "fedmia manifest" in made.output and "--site trainer" in made.output
    read = load_scenario(again)
    assert [s.name for s in read.data.sites] == ["trainer"] and read.data.auditor is not None
    assert read.federation.clients == 1 and read.model.head == "sigmoid"


# slow: whole runs; the init logic above is tested without them
@pytest.mark.slow
def test_a_decathlon_folder_goes_init_validate_run_and_its_model_learns(tmp_path):
    """init → validate → run on a Decathlon-style folder, as a user types it, with init's own
    scenario unchanged: the unlabelled image named and left out, a model that learns (it once
    reported on a model with Dice 0.000), and no "learnt nothing" warning."""
    root = _decathlon(tmp_path)
    scenario = tmp_path / "audit.yaml"
    made = subprocess.run([*CLI, "init", str(root), "--out", str(scenario)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    written = yaml.safe_load(scenario.read_text())
    assert written["data"]["options"]["listing"] == "dataset.json" and written["data"]["options"]["window"] == [-160, 240]
    assert "without a label, not listed and not read: case_015.nii.gz" in scenario.read_text()  # named
    checked = subprocess.run([*CLI, "validate", str(scenario)], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "run"
    done = subprocess.run([*CLI, "run", str(scenario), "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["utility"]["dice"] > 0.5, metrics["utility"]
    assert "learnt nothing" not in (out / "report.md").read_text()
    assert metrics["setup"]["members"] == yaml.safe_load(scenario.read_text())["data"]["members"]  # scans


@pytest.mark.slow
def test_a_plain_smp_unet_with_one_output_is_audited_through_init_for_model(tmp_path):
    """`init --for-model`, a plain `smp.Unet(encoder_name="resnet18", classes=1)` trained by a short
    PyTorch loop on the trainer folder (BCE on its one logit), `fedmia manifest`, `fedmia
    audit-model`: no YAML written by hand, membership figures at once."""
    import json

    import segmentation_models_pytorch as smp
    import torch

    from fedmia.data.sites import load_folder_records
    from fedmia.validation import load_scenario

    root = _decathlon(tmp_path)
    scenario_file = tmp_path / "model-audit.yaml"
    made = subprocess.run([*CLI, "init", str(root), "--for-model", "--out", str(scenario_file)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    scenario = load_scenario(scenario_file)
    trainer = Path(scenario.data.sites[0].path)
    records = load_folder_records(scenario.data, trainer)  # the images as fedmia reads them: [0, 1]
    torch.manual_seed(0)
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    images = torch.nn.functional.interpolate(torch.as_tensor(records.images), size=32)
    masks = torch.nn.functional.interpolate(torch.as_tensor(records.masks)[:, None].float(), size=32)
    model.train()
    for _ in range(4):
        for start in range(0, len(images), 8):
            optimizer.zero_grad()
            logits = model(images[start:start + 8])
            torch.nn.functional.binary_cross_entropy_with_logits(logits, masks[start:start + 8]).backward()
            optimizer.step()
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    manifests = tmp_path / "manifests"
    listed = subprocess.run([*CLI, "manifest", str(trainer), "--site", "trainer", "--out",
                             str(manifests / "trainer.json")], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    audited = subprocess.run([*CLI, "audit-model", str(tmp_path / "trained.pt"), str(scenario_file), "--manifests",
                              str(manifests), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                             timeout=600)
    assert audited.returncode == 0, audited.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    targets = metrics["setup"]["targets"]
    assert targets["members"] == len(list((trainer / "images").iterdir())) and targets["nonmembers"] > 0
    assert 0 <= metrics["attacks"]["loss"]["auc"] <= 1


def test_audit_model_refuses_a_checkpoint_it_cannot_audit_before_writing_anything(tmp_path):
    """A one-output (sigmoid) checkpoint under a scenario that does not say `head: sigmoid` failed
    late (exit 1, a folder left with only scenario.yaml, the next try refused, `--force` moving a
    finished run aside first). Now: exit 2 naming the fix, and the run folder untouched."""
    import segmentation_models_pytorch as smp
    import torch

    from fedmia.cli import app

    root = _decathlon(tmp_path)
    scenario_file = tmp_path / "model-audit.yaml"
    assert CliRunner().invoke(app, ["init", str(root), "--for-model", "--out", str(scenario_file)]).exit_code == 0
    raw = yaml.safe_load(scenario_file.read_text())
    raw["model"].pop("head")  # as a hand-written scenario would forget it
    scenario_file.write_text(yaml.safe_dump(raw))
    torch.save(smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=1).state_dict(),
               tmp_path / "trained.pt")
    finished = tmp_path / "run"
    finished.mkdir()
    (finished / "keep.txt").write_text("an earlier run's file")
    result = CliRunner().invoke(app, ["audit-model", str(tmp_path / "trained.pt"), str(scenario_file), "--out",
                                      str(finished), "--force"])
    assert result.exit_code == 2, result.output
    assert "set model.head: sigmoid" in " ".join(result.stderr.split())
    assert sorted(p.name for p in finished.iterdir()) == ["keep.txt"]  # nothing written, nothing moved aside
