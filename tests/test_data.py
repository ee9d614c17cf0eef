"""Tests for fedmia.data: records, the three datasets, domain shift, OOD sets, layouts
(partitions and manifests: tests/unit/test_partitions_and_manifests.py)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from fedmia.data.datasets import DATASETS, load_dataset
from fedmia.data.ood import make_ood_set
from fedmia.data.records import DatasetInfo, Records
from fedmia.data.shapes import apply_domain_shift
from fedmia.registry import UnknownNameError

PROCEDURAL = [
    ("digits-scenes", {}, 11),
    ("shapes", {}, 3),
    ("shapes", {"binary": True}, 2),
]


# ---------------------------------------------------------------- records


def _toy_records(n: int = 4, size: int = 4) -> Records:
    images = np.arange(n * size * size, dtype=np.float32).reshape(n, 1, size, size) / (n * size * size)
    masks = np.zeros((n, size, size), dtype=np.int64)
    return Records(images, masks, np.array([f"toy:{i:05d}" for i in range(n)], dtype=object))


def test_records_subset_concat_and_validation():
    records = _toy_records()
    part = records.subset([2, 0])
    assert len(part) == 2 and list(part.ids) == ["toy:00002", "toy:00000"]
    np.testing.assert_array_equal(part.images[0], records.images[2])
    assert len(records.subset([])) == 0
    both = Records.concat([records.subset([0]), records.subset([1, 3])])
    assert list(both.ids) == ["toy:00000", "toy:00001", "toy:00003"]
    with pytest.raises(ValueError, match="length mismatch"):
        Records(records.images, records.masks[:2], records.ids)
    with pytest.raises(ValueError, match="at least one part"):
        Records.concat([])


def test_dominant_class_ignores_background_and_breaks_ties_low():
    masks = np.zeros((4, 4, 4), dtype=np.int64)
    masks[1, :2] = 2  # 8 px of class 2, rest background
    masks[1, 2, :1] = 1  # 1 px of class 1
    masks[2, 0, :2] = 3  # tie between 3 and 1: lower wins
    masks[2, 1, :2] = 1
    records = Records(np.zeros((4, 1, 4, 4)), masks, np.array(["a", "b", "c", "d"], dtype=object))
    np.testing.assert_array_equal(records.dominant_class(), [0, 2, 1, 0])


# ---------------------------------------------------------------- procedural datasets


@pytest.mark.parametrize("name, options, num_classes", PROCEDURAL)
def test_procedural_dataset_shapes_ranges_and_ids(name, options, num_classes):
    records, info = load_dataset(name, records=20, image_size=32, seed=0, options=options)
    assert isinstance(info, DatasetInfo)
    assert (info.name, info.in_channels, info.num_classes) == (name, 1, num_classes)
    assert len(info.class_names) == num_classes and info.class_names[0] == "background"
    assert records.images.shape == (20, 1, 32, 32) and records.images.dtype == np.float32
    assert records.masks.shape == (20, 32, 32) and records.masks.dtype == np.uint8  # smallest type
    assert records.images.min() >= 0.0 and records.images.max() <= 1.0
    assert records.masks.min() >= 0 and records.masks.max() < num_classes
    assert (records.masks.reshape(20, -1) > 0).any(axis=1).all(), "every record should hold foreground"
    assert len(set(records.ids)) == 20 and records.ids[3] == f"{name}:00003"


@pytest.mark.parametrize("name, options, num_classes", PROCEDURAL)
def test_procedural_dataset_is_deterministic(name, options, num_classes):
    first, _ = load_dataset(name, records=6, image_size=32, seed=7, options=options)
    again, _ = load_dataset(name, records=6, image_size=32, seed=7, options=options)
    other, _ = load_dataset(name, records=6, image_size=32, seed=8, options=options)
    longer, _ = load_dataset(name, records=9, image_size=32, seed=7, options=options)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.masks, again.masks)
    assert not np.array_equal(first.images, other.images)
    # Asking for more records does not change the earlier ones.
    np.testing.assert_array_equal(longer.images[:6], first.images)
    np.testing.assert_array_equal(longer.ids[:6], first.ids)


def test_digits_scenes_masks_follow_the_placed_digits():
    records, _ = load_dataset("digits-scenes", records=50, image_size=32, seed=3)
    classes = np.unique(records.masks)
    assert len(classes) > 2 + 1  # background plus more than two digit classes
    assert classes.max() <= 10
    per_scene = [len(np.unique(m[m > 0])) for m in records.masks]
    assert 1 <= min(per_scene) and max(per_scene) <= 3
    # The mask marks ink: labelled pixels are far brighter than the dark, noisy canvas.
    ink, canvas = records.images[:, 0][records.masks > 0], records.images[:, 0][records.masks == 0]
    assert ink.mean() > canvas.mean() + 0.4

    single, _ = load_dataset("digits-scenes", records=20, image_size=32, seed=3, options={"max_digits": 1})
    assert all(len(np.unique(m[m > 0])) == 1 for m in single.masks)


def test_shapes_foreground_is_brighter_but_not_separable_by_threshold():
    records, _ = load_dataset("shapes", records=30, image_size=32, seed=0)
    pixels, masks = records.images[:, 0], records.masks
    background, organ, lesion = (pixels[masks == c] for c in (0, 1, 2))
    assert organ.mean() > background.mean() + 0.05 and lesion.mean() > organ.mean() + 0.05
    # Texture and noise make the intensity distributions overlap.
    assert (background > np.percentile(organ, 25)).mean() > 0.01


def test_load_dataset_reports_bad_arguments():
    with pytest.raises(UnknownNameError, match="digits-scenes"):  # the message lists known names
        load_dataset("mnist", records=2, image_size=32, seed=0)
    with pytest.raises(ValueError, match="digits-scenes: image_size must be >= 16, found 8"):
        load_dataset("digits-scenes", records=2, image_size=8, seed=0)
    with pytest.raises(ValueError, match="shapes: unknown option.*'nosie'"):
        load_dataset("shapes", records=2, image_size=32, seed=0, options={"nosie": 0.1})
    with pytest.raises(ValueError, match="shapes: noise: Input should be greater than or equal to 0, found -1"):
        load_dataset("shapes", records=2, image_size=32, seed=0, options={"noise": -1})
    with pytest.raises(ValueError, match="records must be an integer >= 1"):
        load_dataset("shapes", records=0, image_size=32, seed=0)
    assert {"digits-scenes", "shapes", "folder"} <= set(DATASETS.names())


def test_validate_checks_data_options_against_the_datasets_params(write_scenario):
    """`data.options` meets the dataset's `Params` when the scenario is validated, each problem
    at its key — as attacks' and strategies' parameters do — not first when the data is loaded."""
    from typer.testing import CliRunner

    from fedmia.cli import app
    from fedmia.scenario import ScenarioError
    from fedmia.validation import load_scenario

    path = write_scenario({"data": {"options": {"binary": "yes", "nosie": 0.1}}})
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = dict(caught.value.problems)
    assert "valid boolean" in problems["data.options.binary"]
    assert "unknown key" in problems["data.options.nosie"]

    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: data.options.binary" in result.stderr and f"{path}: data.options.nosie" in result.stderr


# ---------------------------------------------------------------- folder


def _write_folder(root, stems=("b", "a", "c"), image_ext=".png"):
    """Images with a bright left half and masks marking that half; the image size varies."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, stem in enumerate(stems):
        h, w = 20 + 4 * k, 24
        image = np.zeros((h, w, 3), dtype=np.uint8)
        image[:, : w // 2] = (200, 150, 100)
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[:, : w // 2] = 255
        Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def test_folder_loads_pairs_in_sorted_order(tmp_path):
    _write_folder(tmp_path, image_ext=".jpg")
    records, info = load_dataset("folder", records=3, image_size=16, seed=0, options={"path": str(tmp_path)})
    assert list(records.ids) == ["folder:a", "folder:b", "folder:c"]
    assert records.images.shape == (3, 3, 16, 16) and records.images.dtype == np.float32
    assert 0.0 <= records.images.min() and records.images.max() <= 1.0
    assert (info.in_channels, info.num_classes) == (3, 2)
    assert set(np.unique(records.masks)) == {0, 1}
    assert (records.masks[:, :, :7] == 1).all() and (records.masks[:, :, 9:] == 0).all()
    # Red channel ≈ 200/255 on the left half, despite JPEG.
    assert abs(records.images[:, 0, :, :6].mean() - 200 / 255) < 0.05

    gray, info = load_dataset(
        "folder", records=2, image_size=16, seed=0, options={"path": str(tmp_path), "channels": 1}
    )
    assert gray.images.shape == (2, 1, 16, 16) and info.in_channels == 1


def test_folder_index_masks(tmp_path):
    _write_folder(tmp_path, stems=("a",))
    mask = np.zeros((20, 24), dtype=np.uint8)
    mask[:, 8:16], mask[:, 16:] = 1, 2
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    records, info = load_dataset(
        "folder", records=1, image_size=24, seed=0, options={"path": str(tmp_path), "mask_mode": "index"}
    )
    assert info.num_classes == 3 and len(info.class_names) == 3
    assert set(np.unique(records.masks)) == {0, 1, 2}
    with pytest.raises(ValueError, match="holds class 2, but num_classes is 2"):
        load_dataset(
            "folder",
            records=1,
            image_size=24,
            seed=0,
            options={"path": str(tmp_path), "mask_mode": "index", "num_classes": 2},
        )


def test_folder_errors_are_specific(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"folder: path '{missing}' does not exist"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(missing)})
    with pytest.raises(ValueError, match="option 'path' is required"):
        load_dataset("folder", records=1, image_size=16, seed=0)

    _write_folder(tmp_path)
    options = {"path": str(tmp_path)}
    with pytest.raises(ValueError, match="has 3 image/mask pairs, but 5 records were asked for"):
        load_dataset("folder", records=5, image_size=16, seed=0, options=options)
    with pytest.raises(ValueError, match="masks folder .*labels.* does not exist"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={**options, "masks": "labels"})

    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(ValueError, match="image 'b.png' has no mask"):
        load_dataset("folder", records=1, image_size=16, seed=0, options=options)

    broken = tmp_path / "broken"
    _write_folder(broken)
    (broken / "images" / "a.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="image '.*a.png' cannot be read as an image"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(broken)})
    (broken / "images" / "a.png").unlink()
    Image.fromarray(np.zeros((9, 7), dtype=np.uint8)).save(broken / "masks" / "b.png")
    with pytest.raises(ValueError, match="mask '.*b.png' is 7x9 but its image '.*b.png' is"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(broken)})

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_dataset("folder", records=1, image_size=16, seed=0, options={"path": str(empty)})


# ---------------------------------------------------------------- partition


# ---------------------------------------------------------------- domain shift


def test_domain_shift():
    images, _ = load_dataset("shapes", records=4, image_size=32, seed=0)
    images = images.images
    np.testing.assert_array_equal(apply_domain_shift(images, 0, 1.0, seed=0), images)
    np.testing.assert_array_equal(apply_domain_shift(images, 3, 0.0, seed=0), images)
    shifted = {d: apply_domain_shift(images, d, 1.0, seed=0) for d in (1, 2)}
    for d, out in shifted.items():
        assert out.dtype == np.float32 and out.shape == images.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.abs(out - images).mean() > 0.01, f"domain {d} barely changed the images"
        np.testing.assert_array_equal(out, apply_domain_shift(images, d, 1.0, seed=0))
    assert not np.allclose(shifted[1], shifted[2])
    with pytest.raises(ValueError, match="domain must be"):
        apply_domain_shift(images, -1, 1.0, seed=0)


# ---------------------------------------------------------------- out-of-distribution sets


@pytest.mark.parametrize("kind", ["noise", "other-dataset", "scaled", "permuted"])  # the made-up sets
def test_ood_sets_match_the_reference(kind):
    reference, info = load_dataset("shapes", records=6, image_size=32, seed=0)
    ood = make_ood_set(kind, reference, info, count=9, seed=1)  # more than the reference holds
    assert ood.images.shape == (9, 1, 32, 32) and ood.images.dtype == np.float32
    assert ood.masks.shape == (9, 32, 32) and ood.masks.dtype == np.uint8
    assert ood.images.min() >= 0.0 and ood.images.max() <= 1.0
    assert ood.masks.min() >= 0 and ood.masks.max() < info.num_classes
    assert ood.ids[3] == f"ood-{kind}:00003" and len(set(ood.ids)) == 9
    again = make_ood_set(kind, reference, info, count=9, seed=1)
    np.testing.assert_array_equal(ood.images, again.images)


def test_ood_kinds_do_what_they_say():
    reference, info = load_dataset("shapes", records=5, image_size=32, seed=0)

    noise = make_ood_set("noise", reference, info, count=5, seed=0)
    assert (noise.masks == 0).all() and noise.images.std() > 0.2

    # count == len(reference): each reference record once, in some order; find it by its mask.
    scaled = make_ood_set("scaled", reference, info, count=5, seed=0)
    for image, mask in zip(scaled.images, scaled.masks):
        k = next(k for k in range(5) if np.array_equal(reference.masks[k], mask))
        np.testing.assert_allclose(image, np.clip(reference.images[k] * 3, 0, 1), rtol=1e-6)
    # the paper's way: far outside the data range, not clipped (the same records, same order)
    far = make_ood_set("scaled-far", reference, info, count=5, seed=0)
    assert far.images.dtype == np.float32 and far.images.max() > 100.0
    np.testing.assert_array_equal(far.masks, scaled.masks)
    np.testing.assert_allclose(far.images, np.asarray([reference.images[next(
        k for k in range(5) if np.array_equal(reference.masks[k], m))] * 255 for m in far.masks]), rtol=1e-6)

    permuted = make_ood_set("permuted", reference.subset([0]), info, count=1, seed=0)
    assert not np.array_equal(permuted.images, reference.images[:1])
    # The same pixels, just moved: and each pixel keeps its label.
    np.testing.assert_allclose(np.sort(permuted.images.ravel()), np.sort(reference.images[0].ravel()))
    def pixel_label_pairs(images, masks):
        return sorted(zip(images.ravel().tolist(), masks.ravel().tolist()))

    assert pixel_label_pairs(permuted.images, permuted.masks) == pixel_label_pairs(
        reference.images[:1], reference.masks[:1]
    )


def test_ood_other_dataset_adapts_to_the_reference(tmp_path):
    shapes, shapes_info = load_dataset("shapes", records=3, image_size=32, seed=0)
    digits = make_ood_set("other-dataset", shapes, shapes_info, count=4, seed=0)
    assert digits.masks.max() <= 2 and (digits.masks > 0).any()  # digit classes clipped into range

    _write_folder(tmp_path)
    rgb, rgb_info = load_dataset("folder", records=3, image_size=20, seed=0, options={"path": str(tmp_path)})
    other = make_ood_set("other-dataset", rgb, rgb_info, count=2, seed=0)
    assert other.images.shape == (2, 3, 20, 20) and other.masks.shape == (2, 20, 20)
    assert set(np.unique(other.masks)) <= {0, 1}
    with pytest.raises(UnknownNameError):
        make_ood_set("adversarial", shapes, shapes_info, count=2, seed=0)


# ---------------------------------------------------------------- a client loads only its own records


@pytest.mark.parametrize("changes", [
    {"data": {"dataset": "shapes", "domain_shift": 0.5, "public": 4,
              "partition": {"kind": "dirichlet", "alpha": 0.3}}, "federation": {"clients": 3}},
    {"data": {"options": {"binary": False}}, "federation": {"clients": 4}},
])
def test_a_client_loads_exactly_its_partition_from_the_layout(write_scenario, changes):
    from fedmia.data.plan import build_plan
    from fedmia.validation import load_scenario

    scenario = load_scenario(write_scenario(changes))
    plan = build_plan(scenario)
    for k, expected in enumerate(plan.clients):
        own, public = plan.layout.load_client(k)
        assert list(own.ids) == list(expected.ids)
        np.testing.assert_array_equal(own.images, expected.images)  # domain shift included
        np.testing.assert_array_equal(own.masks, expected.masks)
        if plan.public is not None:
            np.testing.assert_array_equal(public.images, plan.public.images)


def test_a_ray_worker_takes_the_handed_over_layout_and_builds_no_plan(write_scenario):
    """Ray ships `client_fn` by value (cloudpickle), module globals it names included: the
    layout it carries must land in the worker's own cache, or every worker rebuilds the whole
    federation plan (it did: ~2 s of each worker's warm-up in the quickstart). A fresh process
    stands in for the worker."""
    import subprocess
    import sys

    from ray import cloudpickle

    from fedmia.client_app import make_client_fn
    from fedmia.data.plan import build_plan
    from fedmia.validation import load_scenario

    scenario = load_scenario(write_scenario({}))
    shipped = cloudpickle.dumps(make_client_fn(scenario, build_plan(scenario).layout))
    worker = (
        "import pickle, sys\n"
        "client_fn = pickle.loads(sys.stdin.buffer.read())\n"
        "from flwr.common import Context, RecordDict\n"
        "import fedmia.data.plan as plan\n"
        "client_fn(Context(run_id=1, node_id=1, node_config={'partition-id': 1, 'num-partitions': 2},\n"
        "                  state=RecordDict(), run_config={}))\n"
        "print(plan._build_plan_cached.cache_info().misses)\n"
    )
    done = subprocess.run([sys.executable, "-c", worker], input=shipped, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip().splitlines()[-1] == "0"


def test_a_folder_client_opens_only_its_own_files(write_scenario, tmp_path, monkeypatch):
    from fedmia.data import folder
    from fedmia.data.plan import build_plan
    from fedmia.validation import load_scenario

    root = tmp_path / "scans"
    _write_folder(root, stems=tuple(f"s{i:02d}" for i in range(12)))
    path = write_scenario({"data": {"dataset": "folder", "members": 6, "heldout": 3, "population": 3}})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["options"] = {"path": str(root)}  # replaces the tiny scenario's shapes options
    path.write_text(yaml.safe_dump(raw))
    scenario = load_scenario(path)
    plan = build_plan(scenario)
    opened = []
    real = folder._read_image
    monkeypatch.setattr(folder, "_read_image", lambda path, *a: opened.append(path.stem) or real(path, *a))
    own, _ = plan.layout.load_client(1)
    assert sorted(opened) == sorted(i.split(":")[1] for i in plan.clients[1].ids)
    np.testing.assert_array_equal(own.images, plan.clients[1].images)


def test_a_supernode_is_placed_by_its_node_config(tmp_path):
    from fedmia.client_app import partition_of
    from fedmia.scenario import Scenario

    sites = Scenario.model_validate({"name": "s", "data": {"dataset": "folder", "sites": [{"name": "a"}, {"name": "b"}]}})
    assert partition_of(sites, {"site": "b", "data-path": "/scans"}) == (1, "/scans")
    with pytest.raises(ValueError, match=r"site='c' is not one of the scenario's data.sites \['a', 'b'\]"):
        partition_of(sites, {"site": "c", "data-path": "/scans"})
    with pytest.raises(ValueError, match="data-path is for a multi-site scenario"):
        partition_of(Scenario.model_validate({"name": "p"}), {"partition-id": 0, "data-path": "/scans"})


def test_a_run_builds_its_plan_once(write_scenario, tmp_path, stops_its_processes):
    """`fedmia run` reads the federation plan where it needs it (start-up, server app, release,
    attacks, evaluation) but builds it once: the others are the same scenario's cached plan, and
    the workers take the layout handed to them (the test above). A second build would re-read a
    folder dataset and re-draw nothing different — only cost."""
    from fedmia.data import plan
    from fedmia.runner import run_scenario
    from fedmia.validation import load_scenario

    scenario = load_scenario(write_scenario({}))
    plan._build_plan_cached.cache_clear()
    run_scenario(scenario, tmp_path / "run")
    built = plan._build_plan_cached.cache_info()
    assert built.misses == 1 and built.hits >= 3, built
