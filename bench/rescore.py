"""Attack finished runs again with other attacks, without training their federations again.

For every seed folder of a `fedmia replicate` folder (moved-aside `seed-NN.replaced-*` skipped):
its `scenario.yaml` with `attacks` replaced by the ones given and the OOD sets off, attacked on
its saved transcript (`fedmia.pipeline.finish_run`), into OUT/seed-NN — a run folder of its own,
which `bench/paired_seeds.py OUT` then compares attack against attack, paired by seed. Reference
and shadow models come from the cache when the rescored attacks share the originals' settings.

    python bench/rescore.py runs/lira-seeds-fed --out runs/lira-seeds-rmia-online \\
        --attacks rmia rmia-online 'rmia:rmia-federated:training=federated' \\
        'rmia-online:rmia-online-federated:training=federated'

An attack is NAME, or NAME:LABEL[:KEY=VALUE,...] (values parsed as YAML).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from fedmia.pipeline import finish_run, prepare_run_folder
from fedmia.transcript import Transcript
from fedmia.validation import load_scenario, parse_scenario


def attack_spec(text: str) -> dict:
    name, _, rest = text.partition(":")
    label, _, settings = rest.partition(":")
    spec = {"name": name}
    if label:
        spec["label"] = label
    for pair in filter(None, settings.split(",")):
        key, _, value = pair.partition("=")
        spec[key] = yaml.safe_load(value)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("replicate", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--attacks", nargs="+", required=True)
    args = parser.parse_args()
    seeds = sorted(p for p in args.replicate.glob("seed-*") if p.is_dir() and ".replaced-" not in p.name)
    if not seeds:
        raise SystemExit(f"{args.replicate}: no seed-NN folders (expected a fedmia replicate folder)")
    for folder in seeds:
        raw = load_scenario(folder / "scenario.yaml").resolved()
        raw["attacks"] = [attack_spec(a) for a in args.attacks]
        raw["evaluation"]["ood"] = []
        scenario = parse_scenario(raw, f"{folder / 'scenario.yaml'} (rescored)")
        out = args.out / folder.name
        if (out / "completed.json").exists():
            print(f"{out}: done already")
            continue
        shutil.rmtree(out, ignore_errors=True)  # an interrupted rescore of this seed: start it again
        prepare_run_folder(out, scenario)
        metrics = finish_run(scenario, Transcript.load(folder / "transcript"), out, timing={}).as_json()
        print(folder.name, {k: round(v["auc"], 3) for k, v in metrics["attacks"].items()})


if __name__ == "__main__":
    main()
