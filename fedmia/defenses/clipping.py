"""Per-sample clipped gradient sums without per-sample gradients ("book-keeping" clipping).

DP-SGD needs Σ_b min(1, C/‖g_b‖) g_b over the records b of a batch. Materialising every g_b
(`torch.func.vmap`, Opacus's hooks) costs B × the model in memory and a slow batched kernel per
layer. For a layer with input a_b and output gradient δ_b, g_b = δ_bᵀ a_b, so one ordinary
backward pass that keeps each layer's (a, δ) gives (Bu et al., "Differentially private
optimization on large model at small cost", ICML 2023):
  1. ‖g_b‖² per layer — directly (a per-sample product, kept for step 3 only when small) or,
     when the layer has few output positions T, from Gram matrices: ‖δ_bᵀ a_b‖² =
     Σ (a_b a_bᵀ)∘(δ_b δ_bᵀ) ("ghost norm"), whichever needs fewer multiplications;
  2. the clip factors c_b from the summed norms, as Opacus computes them;
  3. Σ_b c_b g_b per layer as one ordinary weight gradient of (a, c·δ).
The backward pass computes no weight gradient at all, so the cost is about plain training's.

Why hand-written: Opacus's own fast/ghost clipping computes norms only for Linear and Embedding
layers and pays a second backward pass; smp models are Conv2d and GroupNorm. The clip factors
follow Opacus's `DPOptimizer` (C / (‖g_b‖ + 1e-6), at most 1), and Opacus's
`DPOptimizerFastGradientClipping` adds the noise and steps. A model with any other layer that
holds parameters is not supported (`supports`): DP-SGD then takes the `torch.func` path.
tests/test_dp_clipping.py checks the sums against per-sample gradients from `torch.func`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

LAYERS = (nn.Conv2d, nn.Linear, nn.GroupNorm)


def unsupported_layers(model: nn.Module) -> list[str]:
    """Modules holding trainable parameters that this file cannot clip for (name: kind)."""
    out = []
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            known = isinstance(module, LAYERS) and not (
                isinstance(module, nn.Conv2d) and (isinstance(module.padding, str) or module.padding_mode != "zeros"))
            if not known:
                out.append(f"{name}: {type(module).__name__}")
    return out


def supports(model: nn.Module) -> bool:
    """Every module that holds trainable parameters is a layer this file knows."""
    return not unsupported_layers(model)


class _Tap:
    """One layer's input (saved in the forward pass) and output gradient (saved in the backward)."""

    def __init__(self, module: nn.Module):
        self.module, self.input, self.version, self.grad, self.calls = module, None, None, None, 0

    def forward_hook(self, module, inputs, output) -> None:
        self.calls += 1
        self.input, self.version = inputs[0].detach(), inputs[0]._version
        # A tensor hook sees the gradient of the value the layer produced, even when a later
        # op (ReLU(inplace), ResNet's `out += identity`) overwrites that tensor in place.
        output.register_hook(self.backward_hook)

    def backward_hook(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()


# A layer's per-record gradients up to this many numbers in all (4 MB) are kept from the norm
# pass to the sum; larger ones are summed afresh by one weight-gradient kernel, so memory stays
# bounded by the model's activations however large its layers.
KEEP = 2**20


def _ghost_sq_norms(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """‖Σ_t d_t a_tᵀ‖² per sample for a (B, K, T), d (B, O, T) from two T×T Gram matrices."""
    return ((a.transpose(1, 2) @ a) * (d.transpose(1, 2) @ d)).sum((1, 2))


def _as_matmul(module: nn.Module, a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A Linear layer, or a pointwise (1×1, stride 1, unpadded, ungrouped) convolution — most
    of a MobileNet — as a product over positions: a (B, K, T), d (B, O, T); else None."""
    b = a.shape[0]
    if isinstance(module, nn.Linear):
        return a.reshape(b, -1, a.shape[-1]).transpose(1, 2), d.reshape(b, -1, d.shape[-1]).transpose(1, 2)
    if (module.kernel_size == (1, 1) and module.stride == (1, 1) and module.padding == (0, 0)
            and module.groups == 1):
        return a.flatten(2), d.flatten(2)
    return None


def _per_sample(tap: _Tap) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(‖g_b‖² of the layer's parameters, the per-record gradients kept for the sum by name)."""
    module, a, d = tap.module, tap.input, tap.grad
    b = a.shape[0]
    rows: dict[str, torch.Tensor] = {}
    if isinstance(module, nn.GroupNorm):
        normalised = F.group_norm(a, module.num_groups, eps=module.eps)
        dims = tuple(range(2, a.dim()))
        rows = {"weight": (normalised * d).sum(dims), "bias": d.sum(dims)}
        return rows["weight"].pow(2).sum(1) + rows["bias"].pow(2).sum(1), rows
    product = _as_matmul(module, a, d)
    if product is not None:
        a2, d2 = product
        (_, k, t), out = a2.shape, d2.shape[1]
        if t * (k + out) < k * out:  # few positions: ghost norm
            sq = _ghost_sq_norms(a2, d2)
        else:
            per_record = d2 @ a2.transpose(1, 2)
            sq = per_record.flatten(1).pow(2).sum(1)
            if per_record.numel() <= KEEP:
                rows["weight"] = per_record.view(b, *module.weight.shape)
        bias = d2.sum(2)
    else:  # a Conv2d with a kernel
        t, k, out = d.shape[2] * d.shape[3], module.weight[0].numel(), module.out_channels
        if module.groups == 1 and t * (k + out) < k * out:
            columns = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
            sq = _ghost_sq_norms(columns, d.reshape(b, out, t))
        else:
            if module.groups > 1 and t <= 4:
                # a depthwise conv deep in the encoder (≤ 2×2 outputs): a batched product over
                # the few unfolded positions; the grouped kernel below costs per group (B ×
                # channels of them), 2–4× slower there (MobileNet-v2, measured)
                g = module.groups
                columns = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
                per_record = d.reshape(b, g, out // g, t) @ columns.view(b, g, k, t).transpose(2, 3)
            else:  # each record's weight gradient at once, the batch folded into the groups
                per_record = torch.nn.grad.conv2d_weight(
                    a.reshape(1, -1, *a.shape[2:]), (b * out, *module.weight.shape[1:]),
                    d.reshape(1, -1, *d.shape[2:]), module.stride, module.padding, module.dilation,
                    module.groups * b)
            per_record = per_record.reshape(b, *module.weight.shape)
            sq = per_record.flatten(1).pow(2).sum(1)
            if per_record.numel() <= KEEP:
                rows["weight"] = per_record
        bias = d.sum((2, 3))
    if module.bias is not None:
        rows["bias"] = bias
        sq = sq + bias.pow(2).sum(1)
    return sq, rows


def _weight_sum(tap: _Tap, factors: torch.Tensor) -> torch.Tensor:
    """Σ_b factors_b g_b for a Conv2d or Linear weight whose per-record gradients were not kept."""
    module, a, d = tap.module, tap.input, tap.grad
    scaled = d * factors.view((-1,) + (1,) * (d.dim() - 1))
    product = _as_matmul(module, a, scaled)
    if product is not None:
        a2, d2 = product  # Σ over records and positions of d aᵀ: one matrix product
        return (d2.transpose(0, 1).flatten(1) @ a2.transpose(1, 2).flatten(0, 1)).view_as(module.weight)
    return torch.nn.grad.conv2d_weight(a, module.weight.shape, scaled, module.stride, module.padding,
                                       module.dilation, module.groups)


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """min(1, C / (‖g‖ + 1e-6)) per record, as Opacus's DPOptimizer clips."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def clipped_gradient_sum(model: nn.Module, x: torch.Tensor, per_sample_loss: Callable[[torch.Tensor], torch.Tensor],
                         max_grad_norm: float) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(Σ_b c_b g_b by parameter name, each record's loss, each record's gradient norm) for one
    batch. `per_sample_loss(output)` → (B,) losses; c_b = min(1, C / (‖g_b‖ + 1e-6))."""
    taps = {name: _Tap(module) for name, module in model.named_modules()
            if isinstance(module, LAYERS) and any(p.requires_grad for p in module.parameters(recurse=False))}
    handles = [tap.module.register_forward_hook(tap.forward_hook) for tap in taps.values()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:  # the backward pass below computes no weight gradient
            p.requires_grad_(False)
        x = x.detach().requires_grad_(True)
        losses = per_sample_loss(model(x))
        torch.autograd.grad(losses.sum(), x)
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for handle in handles:
            handle.remove()
    for name, tap in taps.items():  # what the (a, δ) bookkeeping cannot represent: refuse, never guess
        if tap.calls != 1 or tap.grad is None or tap.input._version != tap.version:
            raise RuntimeError(f"book-keeping clipping: layer {name} ran {tap.calls} times in one forward pass, "
                               "took no part in the loss, or had its input changed in place; expected each layer "
                               "used once (defenses.dp.engine: torch.func handles shared layers)")
    per_layer = {name: _per_sample(tap) for name, tap in taps.items()}
    norms = torch.stack([sq for sq, _ in per_layer.values()]).sum(0).sqrt()
    factors = clip_factors(norms, max_grad_norm)
    sums = {}
    for name, tap in taps.items():
        rows = per_layer[name][1]
        for key, p in tap.module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            sums[f"{name}.{key}" if name else key] = (torch.einsum("b,b...->...", factors, rows[key]) if key in rows
                                                      else _weight_sum(tap, factors))
    return sums, losses.detach(), norms
