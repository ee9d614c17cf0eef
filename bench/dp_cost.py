"""DP-SGD cost: local training with DP-SGD vs plain training of the same model, same data.

Prints the DP/plain wall-time ratio per encoder for fedmia's two DP-SGD engines (book-keeping
clipping, the default; per-sample gradients from torch.func), all measured in this process
(machines are noisy: only the ratio means something). Also times Opacus's own PrivacyEngine in
its two per-sample modes — per-layer hooks and expanded weights (`grad_sample_mode="ew"`) — for
comparison, or says why it cannot run the model.

    python bench/dp_cost.py [--records 64] [--epochs 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from attack_cost import best_of  # noqa: E402  (fastest of a few runs of one work)

from fedmia.data.datasets import load_dataset  # noqa: E402
from fedmia.defenses.dp import to_dp_compatible, train_local_dp  # noqa: E402
from fedmia.models import build_model  # noqa: E402
from fedmia.scenario import ModelSpec  # noqa: E402
from fedmia.training import TrainRecipe, train_local  # noqa: E402


def interleaved_best(works: dict, repeats: int) -> dict[str, float]:
    """`best_of` for several works taking turns, so that a slow spell of this machine hits plain
    and DP training alike instead of skewing their ratio."""
    best = {name: float("inf") for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


ENGINES = ("bookkeeping", "torch.func")


def opacus_hooks(model, records, epochs, batch, mode: str = "hooks"):
    from opacus import PrivacyEngine

    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    data = torch.utils.data.TensorDataset(torch.as_tensor(records.images), torch.as_tensor(records.masks).long())
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        grad_sample_mode=mode)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            if len(x) == 0:
                continue
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timings of each, fastest kept")
    parser.add_argument("--no-opacus", action="store_true", help="skip Opacus's own engines (slow at depth 5)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    records, _ = load_dataset("shapes", records=args.records, image_size=args.size, seed=0, options={"binary": True})
    device = torch.device("cpu")
    print(f"{args.records} records {args.size}x{args.size}, {args.epochs} epochs, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    for encoder, depth in [("resnet18", 3), ("mobilenet_v2", 3), ("mobilenet_v2", 5)]:
        spec = ModelSpec(encoder=encoder, encoder_depth=depth)
        models = {name: to_dp_compatible(build_model(spec, 1, 2, seed=0)) for name in ("plain", *ENGINES)}
        works = {"plain": lambda: train_local(models["plain"], records, TrainRecipe(args.epochs, args.batch, 0.003),
                                              seed=0, device=device)}
        for engine in ENGINES:
            works[engine] = (lambda engine=engine: train_local_dp(
                models[engine], records, epochs=args.epochs, batch_size=args.batch, lr=0.003, optimizer_name="adam",
                noise_multiplier=1.0, max_grad_norm=1.0, seed=0, device=device, engine=engine))
        best = interleaved_best(works, args.repeats)
        plain = best["plain"]
        line = f"{encoder:>13} depth {depth}: plain {plain:6.2f} s"
        for engine in ENGINES:
            line += f"  | {engine} {best[engine]:6.2f} s  ratio {best[engine] / plain:5.2f}x"
        for mode in () if args.no_opacus else ("hooks", "ew"):  # Opacus's own engines: per-layer hooks, expanded weights
            try:
                def opacus(mode=mode):  # model building included, as PrivacyEngine wraps a fresh one
                    opacus_hooks(to_dp_compatible(build_model(spec, 1, 2, seed=0)), records, args.epochs, args.batch, mode)
                took = best_of(opacus, repeats=3)
                line += f"  | Opacus {mode} {took:6.2f} s  ratio {took / plain:5.2f}x"
            except Exception as error:  # e.g. ResNet's in-place add
                line += f"  | Opacus {mode}: fails ({type(error).__name__}: {str(error)[:60]})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
