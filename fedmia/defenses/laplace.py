"""Last-layer Laplace approximation (LLLA, Kristiadi et al. 2020) for calibrated released outputs.

The federation releases the final global model with a Gaussian posterior over its last layer —
the segmentation head's convolution — instead of the point estimate. The posterior is the
Laplace approximation at the trained weights with a Kronecker-factored (KFAC) generalised
Gauss-Newton, fitted on the records named by `fit_on`; the predictive uses the probit
approximation, so it is again a per-pixel softmax of rescaled logits:

    p(y | x) ≈ softmax_c( μ_c / sqrt(1 + π/8 · Σ_cc) ),   Σ = (φᵀ A⁻¹ φ) · G⁻¹

with φ the head's input patch at a pixel (plus 1 for the bias), A the mean of φφᵀ and G the mean
of diag(p) − ppᵀ over pixels, each scaled by the number of records and damped by the prior
precision (Ritter et al.'s damping). Confident scores far from the fitted features shrink most,
which is what should blunt confidence-based membership signals.

Fitting on members is what a real deployment would do: every client computes its A and G on its
own records and the sums are aggregated — the same figures we compute here in one place. The
attacks only see the released module (weights, A⁻¹ and G⁻¹), never the records.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedmia.data.records import Records
from fedmia.defenses.base import Defense, Params, register_defense


class LaplaceParams(Params):
    prior_precision: float = Field(1.0, gt=0, description="τ of the Gaussian prior on the last layer")
    fit_on: Literal["members", "public"] = Field(
        "members", description="records the curvature is fitted on: the clients' own (federated sums "
        "of KFAC factors) or the shared public set (needs data.public)")


@register_defense("laplace", acts_on="release")
class LastLayerLaplace(Defense):
    """The federation serves the final model with a last-layer Laplace posterior (below)."""

    Params = LaplaceParams

    def describe(self) -> str:
        return f"last-layer Laplace release (fit on {self.params.fit_on})"

    def problems(self, scenario) -> list[tuple[str, str]]:
        if self.params.fit_on == "members" and scenario.data.multi_site:
            return [("defenses.laplace.fit_on", "members are the sites' own records, which the server "
                     "never holds in a multi-site audit (data.sites); expected 'public'")]
        if self.params.fit_on == "public" and scenario.data.public < 2:
            return [("defenses.laplace.fit_on", "public needs public records: expected data.public >= 2, "
                     f"found {scenario.data.public}")]
        return []

    def model_problems(self, model) -> list[tuple[str, str]]:
        """A plug-in model without smp's `segmentation_head` conv is refused here, not at release."""
        try:
            head_conv(model)
        except ValueError as error:
            return [("defenses.laplace", f"{error}; {type(model).__name__} has none")]
        return []

    def release(self, model: nn.Module, plan, device) -> tuple[nn.Module, str]:
        records = Records.concat(plan.clients) if self.params.fit_on == "members" else plan.public
        return fit_laplace(model, records, prior_precision=self.params.prior_precision, device=device), \
            "last-layer Laplace"


def head_conv(model: nn.Module) -> nn.Conv2d:
    head = getattr(model, "segmentation_head", None)
    conv = head[0] if isinstance(head, nn.Sequential) else head
    if not isinstance(conv, nn.Conv2d):
        raise ValueError("LLLA needs an smp model whose segmentation_head starts with a Conv2d")
    return conv


class _HeadInput:
    """Captures the last layer's input on every forward pass, as per-pixel patches φ (N, D, L)."""

    def __init__(self, model: nn.Module):
        self.conv = head_conv(model)
        self.patches: torch.Tensor | None = None
        self.handle = self.conv.register_forward_pre_hook(self._capture)

    def _capture(self, _module, inputs):
        conv = self.conv
        patches = F.unfold(inputs[0], conv.kernel_size, dilation=conv.dilation,
                           padding=conv.padding, stride=conv.stride)
        if conv.bias is not None:
            patches = torch.cat([patches, torch.ones_like(patches[:, :1])], dim=1)
        self.patches = patches


class LaplaceRelease(nn.Module):
    """The released model: its logits, rescaled so that their softmax is the LLLA predictive."""

    def __init__(self, model: nn.Module, a_inv: torch.Tensor, g_inv: torch.Tensor):
        super().__init__()
        self.model = model
        self.capture = _HeadInput(model)
        self.register_buffer("a_inv", a_inv)
        self.register_buffer("g_inv_diag", torch.diagonal(g_inv).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        phi = self.capture.patches  # (N, D, L)
        if phi.shape[-1] != logits.shape[-2] * logits.shape[-1]:
            raise ValueError("LLLA expects the head's output at full resolution (no upsampling after it)")
        spread = torch.einsum("ndl,de,nel->nl", phi, self.a_inv, phi).clamp_min(0)  # φᵀA⁻¹φ per pixel
        variance = spread.view(logits.shape[0], 1, *logits.shape[-2:]) * self.g_inv_diag.view(1, -1, 1, 1)
        return logits / torch.sqrt(1 + math.pi / 8 * variance)


@torch.no_grad()
def fit_laplace(model: nn.Module, records: Records, *, prior_precision: float, device,
                batch_size: int = 64) -> LaplaceRelease:
    """KFAC factors of the last layer's GGN on `records`, then the damped inverses."""
    model = model.to(device).eval()
    capture = _HeadInput(model)
    a = g = None
    try:
        for start in range(0, len(records), batch_size):
            x = torch.as_tensor(records.images[start : start + batch_size]).to(device)
            p = torch.softmax(model(x).float(), dim=1).flatten(2)  # (N, C, L)
            phi = capture.patches.float()  # (N, D, L)
            pixels = phi.shape[-1]
            # Per record, the loss is a mean over pixels: each factor is a per-pixel mean.
            batch_a = torch.einsum("ndl,nel->de", phi, phi) / pixels
            batch_g = torch.diag_embed(p.sum((0, 2))) / pixels - torch.einsum("ncl,nkl->ck", p, p) / pixels
            a = batch_a if a is None else a + batch_a
            g = batch_g if g is None else g + batch_g
    finally:
        capture.handle.remove()
    n = len(records)
    a, g = a / n, g / n
    scale, damping = math.sqrt(n), math.sqrt(prior_precision)
    a_inv = torch.linalg.inv(scale * a + damping * torch.eye(a.shape[0], device=a.device))
    g_inv = torch.linalg.inv(scale * g + damping * torch.eye(g.shape[0], device=g.device))
    return LaplaceRelease(model, a_inv, g_inv).eval()
