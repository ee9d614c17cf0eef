"""DP-SGD cost: local training with DP-SGD vs plain training of the same model, same data.

Prints the DP/plain wall-time ratio per encoder, both measured in this process (machines are
noisy: only the ratio means something). Also times Opacus's own hook-based PrivacyEngine on a
MobileNet encoder, the route that works with it, for comparison.

    python bench/dp_cost.py [--records 64] [--epochs 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedmia.data.datasets import load_dataset
from fedmia.defenses.dp import to_dp_compatible, train_local_dp
from fedmia.models import build_model
from fedmia.scenario import ModelSpec
from fedmia.training import TrainRecipe, train_local


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def opacus_hooks(model, records, epochs, batch):
    from opacus import PrivacyEngine

    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    data = torch.utils.data.TensorDataset(torch.as_tensor(records.images), torch.as_tensor(records.masks))
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0)
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
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    records, _ = load_dataset("shapes", records=args.records, image_size=args.size, seed=0, options={"binary": True})
    device = torch.device("cpu")
    print(f"{args.records} records {args.size}x{args.size}, {args.epochs} epochs, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    for encoder, depth in [("resnet18", 3), ("mobilenet_v2", 3), ("mobilenet_v2", 5)]:
        spec = ModelSpec(encoder=encoder, encoder_depth=depth)
        plain_model = to_dp_compatible(build_model(spec, 1, 2, seed=0))
        dp_model = to_dp_compatible(build_model(spec, 1, 2, seed=0))
        plain = timed(lambda: train_local(plain_model, records, TrainRecipe(args.epochs, args.batch, 0.003),
                                          seed=0, device=device))
        dp = timed(lambda: train_local_dp(dp_model, records, epochs=args.epochs, batch_size=args.batch, lr=0.003,
                                          optimizer_name="adam", noise_multiplier=1.0, max_grad_norm=1.0,
                                          seed=0, device=device))
        line = f"{encoder:>13} depth {depth}: plain {plain:6.2f} s  DP-SGD (torch.func) {dp:6.2f} s  ratio {dp / plain:5.2f}x"
        if encoder == "mobilenet_v2":
            hooks = timed(lambda: opacus_hooks(to_dp_compatible(build_model(spec, 1, 2, seed=0)), records,
                                               args.epochs, args.batch))
            line += f"  | Opacus hooks {hooks:6.2f} s  ratio {hooks / plain:5.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
