"""ε spent, from three accountants, and how they were set up — DP's own accounting hook
(`DifferentialPrivacy.privacy_report`), kept beside the defense it accounts for.

Local DP (record level): each client reports, per round, the (noise multiplier, sample rate,
steps) of its Poisson-sampled DP-SGD run; a client's ε composes every round it took part in.
Opacus's RDP accountant, Google's dp-accounting RDP and its PLD accountant each turn that
history into ε; the headline is the smallest (every one is a valid upper bound; PLD is usually
the tightest), the others stand beside it.

Central DP (client level): Flower's server-side wrapper clips each client's update to C and
adds N(0, (σC/m)²) to the mean of the m sampled updates, which fedmia aggregates *uniformly*
under central DP (FedAvg's num_examples weighting would give one client up to C·n_k/Σn of
sensitivity, more than the noise is scaled for). Flower samples a fixed-size set of m of the N
clients, not a Poisson sample, so the neighbouring relation is replace-one: swapping one
client's update moves the mean by up to 2C/m, and the noise multiplier against that
sensitivity is σ/2. Accounted:
  - dp-accounting RDP, replace-one, sampling m of N without replacement (Wang, Balle &
    Kasiviswanathan 2019) — the only amplification theorem that fits fixed-size sampling. Its
    Gaussian event takes std / (replace-one sensitivity), so σ/2 is passed (dp-accounting reads
    the multiplier against the add/remove sensitivity under every relation for RDP; see
    google/differential-privacy issue #378);
  - dp-accounting PLD, replace-one, no amplification (it doubles the sensitivity itself);
  - Opacus RDP, no amplification, σ/2 (add/remove accounting of a mechanism whose sensitivity
    is 2C/m is the replace-one guarantee).
"""

from __future__ import annotations

import functools
import math

from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant



# Integer orders only: dp-accounting's fractional orders below 2 fail to converge for typical
# DP-SGD settings (it then drops them, loudly); at integer orders it agrees with Opacus exactly.
RDP_ORDERS = [*range(2, 129), 160, 192, 256, 384, 512, 1024]



def epsilon_spent(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε after the (noise_multiplier, sample_rate, steps) entries of `history` (Opacus's RDP)."""
    if not history:
        return 0.0
    if any(noise == 0 for noise, _, _ in history):
        return math.inf  # clipping without noise: no DP guarantee at all
    from opacus.accountants.analysis.rdp import get_privacy_spent

    orders, rdp = _opacus_rdp(tuple(map(tuple, history)))
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


@functools.lru_cache(maxsize=64)
def _opacus_rdp(history: tuple[tuple[float, float, int], ...]):
    """Opacus's RDP curve of a history, computed once: its `get_epsilon` recomputes it on every
    call (~1 s here), and the empirical check asks for ε at several δ."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=noise, steps=steps, orders=orders) for noise, q, steps in history)
    return orders, rdp


def _merged(history: list[tuple[float, float, int]]) -> dict[tuple[float, float], int]:
    """Equal (σ, q) entries composed at once: PLD self-composition is far cheaper than a chain."""
    merged: dict[tuple[float, float], int] = {}
    for noise, q, steps in history:
        merged[(noise, q)] = merged.get((noise, q), 0) + steps
    return merged


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else math.inf


def local_epsilons(history: list[tuple[float, float, int]], delta: float) -> dict[str, float]:
    """ε of Poisson-sampled Gaussian steps [(σ, q, steps), …] from three accountants."""
    return dict(_local_epsilons(tuple(map(tuple, history)), delta))


@functools.lru_cache(maxsize=64)  # clients of equal size have equal histories: PLD costs ~2 s each
def _composed(history: tuple[tuple[float, float, int], ...]) -> tuple[RdpAccountant, PLDAccountant]:
    """dp-accounting's RDP and PLD accountants with `history` composed — once per history, then
    asked for ε at any δ (composing is the cost; reading ε off the result is cheap)."""
    rdp, pld = RdpAccountant(orders=RDP_ORDERS), PLDAccountant()
    for (noise, q), steps in _merged(history).items():
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(noise))
        rdp.compose(event, steps)
        pld.compose(event, steps)
    return rdp, pld


def _local_epsilons(history: tuple[tuple[float, float, int], ...], delta: float) -> dict[str, float]:
    if any(noise == 0 for noise, _, _ in history):
        return {"opacus_rdp": math.inf, "dp_accounting_rdp": math.inf, "dp_accounting_pld": math.inf}
    rdp, pld = _composed(history)
    return {"opacus_rdp": epsilon_spent(list(history), delta),
            "dp_accounting_rdp": _finite(rdp.get_epsilon(delta)),
            "dp_accounting_pld": _finite(pld.get_epsilon(delta))}


def central_epsilons(noise_multiplier: float, clients: int, sampled: int, rounds: int, delta: float) -> dict[str, float]:
    """Client-level ε of `rounds` releases of a uniform mean of `sampled` of `clients` clipped
    updates plus Gaussian noise σ·C/sampled (see the module docstring)."""
    if rounds == 0:
        return {"dp_accounting_rdp_wor": 0.0, "dp_accounting_pld": 0.0, "opacus_rdp": 0.0}
    if noise_multiplier == 0:
        return {"dp_accounting_rdp_wor": math.inf, "dp_accounting_pld": math.inf, "opacus_rdp": math.inf}
    rdp, pld = _central_composed(noise_multiplier, clients, sampled, rounds)
    return {"dp_accounting_rdp_wor": _finite(rdp.get_epsilon(delta)),
            "dp_accounting_pld": _finite(pld.get_epsilon(delta)),
            "opacus_rdp": epsilon_spent([(noise_multiplier / 2, 1.0, rounds)], delta)}


@functools.lru_cache(maxsize=64)  # composed once, then read at every δ the empirical check tries
def _central_composed(noise_multiplier: float, clients: int, sampled: int, rounds: int):
    replace_one = noise_multiplier / 2  # std over the replace-one sensitivity 2C/m
    rdp = RdpAccountant(orders=RDP_ORDERS, neighboring_relation=NeighboringRelation.REPLACE_ONE)
    gaussian = dp_event.GaussianDpEvent(replace_one)
    rdp.compose(dp_event.SampledWithoutReplacementDpEvent(clients, sampled, gaussian) if sampled < clients
                else gaussian, rounds)
    pld = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    pld.compose(dp_event.GaussianDpEvent(noise_multiplier), rounds)
    return rdp, pld


def _headline(accountants: dict[str, float]) -> tuple[float, str]:
    best = min(accountants, key=lambda k: accountants[k])
    return accountants[best], best


def _released_rounds(transcript) -> int:
    """Rounds whose aggregate was released: what central DP's accountant counts."""
    return sum(1 for r in transcript.rounds if r.aggregate is not None and r.replies)


def _local_histories(transcript) -> tuple[dict[int, list], dict[int, int]]:
    """Per client: its (noise multiplier, sample rate, steps) per round of DP-SGD, and the records
    it trained on, as its replies report them."""
    history: dict[int, list] = {}
    sizes: dict[int, int] = {}
    for view in transcript.rounds:
        for reply in view.replies:
            m = reply.metrics
            if "dp-steps" in m:
                sizes[int(m["partition-id"])] = int(reply.num_examples)
                history.setdefault(int(m["partition-id"]), []).append(
                    (float(m["dp-noise-multiplier"]), float(m["dp-sample-rate"]), int(m["dp-steps"])))
    return history, sizes


def epsilon_at(dp, scenario, transcript, delta: float, client: int | None = None) -> float:
    """The headline ε (the tightest accountant, as `accounted` reports it) at any δ: of the
    federation (central) or of `client`'s records (local). The empirical check compares its
    lower bound with this at the δ it tests."""
    if dp.mode == "central":
        rounds = _released_rounds(transcript)
        return _headline(central_epsilons(dp.noise_multiplier, scenario.federation.clients,
                                          scenario.clients_per_round, rounds, delta))[0]
    entries = _local_histories(transcript)[0].get(client)
    return _headline(local_epsilons(entries, delta))[0] if entries else math.inf


def accounted(dp, scenario, plan, transcript) -> dict:
    """ε of the run under `dp` (the validated block): central (per client, replace-one) or local
    (per record, every client's rounds of DP-SGD steps as its replies report them)."""
    if dp.mode == "central":
        delta = dp.delta or 1.0 / (10 * scenario.federation.clients)
        rounds = _released_rounds(transcript)
        accountants = central_epsilons(dp.noise_multiplier, scenario.federation.clients,
                                       scenario.clients_per_round, rounds, delta)
        epsilon, best = _headline(accountants)
        out = {"mode": "central", "level": "client", "epsilon": epsilon, "accountant": best,
               "accountants": accountants, "delta": delta, "noise_multiplier": dp.noise_multiplier,
               "clipping": dp.clipping, "clipping_norm": dp.clipping_norm, "released_rounds": rounds,
               "sampling": f"{scenario.clients_per_round} of {scenario.federation.clients} clients per round, "
                           "without replacement (replace-one adjacency)",
               "aggregation": "uniform mean of clipped updates"}
        if dp.clipping == "adaptive":
            out["caveat"] = ("adaptive clipping: Flower noises each round with the clipping norm it has "
                             "just updated, not the one it clipped with; when the norm shrinks the noise "
                             "is smaller than σ·C assumes and these ε are optimistic")
        return out
    history, sizes = _local_histories(transcript)
    per_client = {}
    for k, entries in sorted(history.items()):
        delta = dp.delta or 1.0 / (10 * (len(plan.clients[k]) if plan.clients else sizes[k]))
        accountants = local_epsilons(entries, delta)
        epsilon, best = _headline(accountants)
        per_client[str(k)] = {"epsilon": epsilon, "accountant": best, "accountants": accountants,
                              "delta": delta, "noise_multiplier": entries[-1][0],
                              "steps": sum(e[2] for e in entries)}
    worst = max(per_client.values(), key=lambda c: c["epsilon"]) if per_client else \
        {"epsilon": float("nan"), "delta": None, "accountant": None, "accountants": {}}
    return {"mode": "local", "level": "record", "epsilon": worst["epsilon"], "accountant": worst["accountant"],
            "accountants": worst["accountants"], "delta": worst["delta"],
            "max_grad_norm": dp.max_grad_norm, "per_client": per_client}
