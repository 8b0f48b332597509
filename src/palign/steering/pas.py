"""PAS per-person fit on pure tensors: probes, head selection, directions, alpha selection.

Activation layout (fixed): ``acts`` is ``(2 * n_items, n_layers, n_heads, head_dim)`` with
sample ``2 i`` = item ``i`` answered "A" (Very Accurate) and sample ``2 i + 1`` = item ``i``
answered "E" (Very Inaccurate); ``answers`` is ``(n_items,)`` on the 1..5 scale (5 = Very
Accurate), ``0`` or NaN = missing.

Per person:

1. :func:`labels_for`: a sample is 1 if its letter matches the person (A for answer > 3, E
   for answer < 3), else 0; neutral (3) and missing answers are skipped.
2. :func:`fit_person`: one logistic probe per head on a seeded 60/40 split *of items* (both
   samples of an item fall on the same side; ``probe_split="samples"``: of the samples, as
   the original code, seeded here), heads ranked by the mean of validation and
   training accuracy (``head_rank="mean"``, the original's ranking) or by validation accuracy
   alone (``head_rank="val"``); validation log-loss breaks ties; top ``K`` kept; per kept head
   the normalised
   mass-mean direction and the std ``sigma`` of the samples' projections on it, over all the
   person's labelled samples.
3. :func:`shifts` / :func:`layer_vectors`: the shift ``alpha * sigma * direction`` of each
   kept head, and its image through ``o_proj``: ``u_l = sum_h W_o[:, h] @ shift_h``.
4. :func:`select_alpha`: alpha chosen by seeded k-fold cross-validation over the *shown*
   items only (refit without the held-out fold, score it through a callback).
   :func:`oracle_alpha` is the separate, explicitly named path that scores test items.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from palign.errors import PalignError
from palign.steering.arch import ArchSpec
from palign.steering.probes import fit_probes_full, mass_mean_directions, rank_heads

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_FOLDS",
    "DEFAULT_HEAD_RANK",
    "DEFAULT_K",
    "HEAD_RANKS",
    "DEFAULT_PROBE_SPLIT",
    "PROBE_SPLITS",
    "PASFit",
    "PASResult",
    "ScoreFn",
    "WoSource",
    "fit_pas",
    "fit_person",
    "check_head_rank",
    "check_probe_split",
    "check_fold_heads",
    "FOLD_HEADS",
    "fold_assignment",
    "refit_directions",
    "seeded_item_order",
    "head_scores",
    "head_score_map",
    "HeadScores",
    "labels_for",
    "layer_vectors",
    "layer_vectors_grid",
    "oracle_alpha",
    "ranks_behind",
    "select_alpha",
    "shifts",
    "unit_layer_vectors",
]

DEFAULT_K = 24
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)
HEAD_RANKS: tuple[str, ...] = ("mean", "val")
#: The original code's head ranking: the mean of validation and training probe accuracy.
DEFAULT_HEAD_RANK = "mean"
PROBE_SPLITS: tuple[str, ...] = ("items", "samples")
#: palign's probe split: 60/40 over items (the A and E samples of an item on one side).
#: ``"samples"`` is the original code's: 60/40 over the samples (``np.random.choice``).
DEFAULT_PROBE_SPLIT = "items"
#: The error of an unparsed/out-of-range prediction (the largest possible on 1..5), in every
#: alpha selection (held-out and oracle), so an alpha cannot win on the few items it parses.
UNPARSED_ERROR = 4.0
#: Folds of the held-out alpha selection (the ``pas`` methods' ``folds`` default).
DEFAULT_FOLDS = 3

WoSource = ArchSpec | Callable[[int], torch.Tensor] | Sequence[torch.Tensor]
"""Where ``W_o`` of a layer comes from: an :class:`ArchSpec`, ``layer -> (hidden, H*d)``, or a
list of per-layer ``(hidden, H*d)`` tensors."""

ScoreFn = Callable[[torch.Tensor, list[int]], Any]
"""``score_fn(u_by_alpha (n_alpha, L, hidden), item_indices) -> (n_alpha, n_items)``
predicted answers (1..5) of the given items under each alpha's steering."""


def _answers_tensor(answers: Any) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(answers, dtype=np.float64)).flatten()
    a = torch.where(torch.isnan(a), torch.zeros_like(a), a)
    bad = (a != 0) & ((a < 1) | (a > 5))
    if bool(bad.any()):
        raise PalignError(
            f"answers must be 1..5 (0/NaN = missing), got {sorted(set(a[bad].tolist()))[:5]}"
        )
    return a


def labels_for(answers: Any) -> torch.Tensor:
    """Sample labels for the fixed layout (sample ``2i`` = "A", ``2i+1`` = "E").

    Args:
        answers: ``(n_items,)`` answers 1..5, 0/NaN = missing.

    Returns:
        ``(2 * n_items,)`` int64: 1 = the letter matches the person, 0 = it does not,
        -1 = skipped (neutral 3 or missing).
    """
    a = _answers_tensor(answers)
    agree = a > 3
    disagree = (a > 0) & (a < 3)
    lab_a = torch.where(agree, 1, torch.where(disagree, 0, -1))
    lab_e = torch.where(agree, 0, torch.where(disagree, 1, -1))
    return torch.stack([lab_a, lab_e], dim=1).flatten().to(torch.long)


@dataclass
class PASFit:
    """One person's fitted PAS heads.

    Attributes:
        heads: kept ``(layer, head)`` pairs, best first.
        directions: ``(K, head_dim)`` unit mass-mean directions.
        sigmas: ``(K,)`` std of the samples' projections on each direction.
        val_accuracy: ``(K,)`` probe validation accuracy of the kept heads.
        K: number of heads requested.
        seed: seed of the train/validation split.
        n_layers: layers of the model.
        n_heads: query heads per layer.
        head_dim: width of one head.
        n_items: items used (non-neutral, answered).
        head_rank: how the heads were ranked (``"mean"`` of validation and training
            accuracy, or ``"val"`` = validation accuracy alone).
        train_accuracy: ``(K,)`` probe training accuracy of the kept heads (``None`` where
            unknown, e.g. adapters written before it was recorded).
    """

    heads: list[tuple[int, int]]
    directions: torch.Tensor
    sigmas: torch.Tensor
    val_accuracy: torch.Tensor
    K: int
    seed: int
    n_layers: int
    n_heads: int
    head_dim: int
    n_items: int = 0
    head_rank: str = DEFAULT_HEAD_RANK
    train_accuracy: torch.Tensor | None = None
    probe_split: str = DEFAULT_PROBE_SPLIT


def _check_choice(value: str, choices: tuple[str, ...], what: str, legend: str) -> str:
    """Return ``value`` if it is one of ``choices``, else a one-line PalignError."""
    if value not in choices:
        raise PalignError(f"unknown {what} {value!r}; use one of: {', '.join(choices)} ({legend})")
    return value


def check_head_rank(head_rank: str) -> str:
    """Return ``head_rank`` if it is one of :data:`HEAD_RANKS`, else raise PalignError."""
    return _check_choice(
        head_rank,
        HEAD_RANKS,
        "head ranking",
        "mean = mean of validation and training accuracy, as the original; val = validation",
    )


def check_probe_split(probe_split: str) -> str:
    """Return ``probe_split`` if it is one of :data:`PROBE_SPLITS`, else raise PalignError."""
    return _check_choice(
        probe_split,
        PROBE_SPLITS,
        "probe split",
        "items = both samples of an item on one side, palign's; samples = the original's",
    )


def head_scores(
    val_accuracy: torch.Tensor, train_accuracy: torch.Tensor, head_rank: str
) -> torch.Tensor:
    """The ``(L, H)`` score heads are ranked by (higher = better).

    ``"val"``: the validation accuracy. ``"mean"``: ``(validation + training accuracy) / 2``,
    as the original code (``all_head_accs_np.mean(2)`` over ``[val_acc, train_acc]``).
    """
    check_head_rank(head_rank)
    if head_rank == "val":
        return val_accuracy
    return (val_accuracy + train_accuracy) / 2


def _check_acts(acts: torch.Tensor, n_items: int) -> None:
    if not isinstance(acts, torch.Tensor) or acts.ndim != 4:
        raise PalignError(
            "activations must be a (2 * n_items, layers, heads, head_dim) tensor, got "
            f"{tuple(getattr(acts, 'shape', ()))}"
        )
    if acts.shape[0] != 2 * n_items:
        raise PalignError(
            f"{acts.shape[0]} activation samples for {n_items} answers; the layout needs "
            "2 samples per item (A then E)"
        )


def _seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def _split_items(n: int, seed: int, val_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    perm = _seeded_perm(n, seed)
    n_val = min(n - 1, max(1, int(round(val_frac * n))))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _split_samples(n: int, seed: int, val_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's split of ``n`` samples: ``int(n * (1 - val_frac))`` drawn for training
    without replacement, the rest for validation (seeded here; the original sets no seed)."""
    perm = _seeded_perm(n, seed)
    n_train = min(n - 1, max(1, int(n * (1 - val_frac))))
    return perm[:n_train].sort().values, perm[n_train:].sort().values


@dataclass
class HeadScores:
    """One person's probe results over every head (what :func:`fit_person` ranks).

    Attributes:
        score: ``(L, H)`` the ranking score (higher = better; :func:`head_scores`).
        val_loss: ``(L, H)`` validation log-loss (the tie-break, lower = better).
        val_accuracy: ``(L, H)`` probe validation accuracy.
        train_accuracy: ``(L, H)`` probe training accuracy.
        labels: ``(2 * n_items,)`` the sample labels (:func:`labels_for`).
        usable: indices of the answered non-neutral items.
    """

    score: torch.Tensor
    val_loss: torch.Tensor
    val_accuracy: torch.Tensor
    train_accuracy: torch.Tensor
    labels: torch.Tensor
    usable: torch.Tensor


def head_score_map(
    acts: torch.Tensor,
    answers: Any,
    seed: int = 0,
    val_frac: float = 0.4,
    l2: float = 1.0,
    steps: int = 10,
    head_rank: str = DEFAULT_HEAD_RANK,
    probe_split: str = DEFAULT_PROBE_SPLIT,
) -> HeadScores:
    """The probes of :func:`fit_person` on every head, before any head is kept (arguments as
    there). Averaging ``score`` over persons gives a population head ranking.

    Raises:
        PalignError: bad shapes, or fewer than 2 answered non-neutral items.
    """
    check_head_rank(head_rank)
    check_probe_split(probe_split)
    a = _answers_tensor(answers)
    _check_acts(acts, a.shape[0])
    y = labels_for(a)
    usable = torch.nonzero((a > 0) & (a != 3)).flatten()
    if usable.numel() < 2:
        raise PalignError(
            f"PAS needs at least 2 answered non-neutral items, this person has "
            f"{usable.numel()}; give more answers"
        )

    def samples(items: torch.Tensor) -> torch.Tensor:
        return torch.stack([2 * items, 2 * items + 1], dim=1).flatten()

    if probe_split == "samples":
        pool = samples(usable)
        tr_s, va_s = _split_samples(pool.numel(), seed, val_frac)
        tr, va = pool[tr_s], pool[va_s]
    else:
        tr_items, va_items = _split_items(usable.numel(), seed, val_frac)
        tr, va = samples(usable[tr_items]), samples(usable[va_items])
    probe = fit_probes_full(acts, y, tr, va, l2=l2, steps=steps)
    train_acc = _probe_accuracy(acts, y, tr, probe.weights, probe.bias)
    return HeadScores(
        score=head_scores(probe.val_accuracy, train_acc, head_rank),
        val_loss=probe.val_loss,
        val_accuracy=probe.val_accuracy,
        train_accuracy=train_acc,
        labels=y,
        usable=usable,
    )


def fit_person(
    acts: torch.Tensor,
    answers: Any,
    K: int = DEFAULT_K,
    seed: int = 0,
    val_frac: float = 0.4,
    l2: float = 1.0,
    steps: int = 10,
    head_rank: str = DEFAULT_HEAD_RANK,
    probe_split: str = DEFAULT_PROBE_SPLIT,
) -> PASFit:
    """Fit one person's PAS heads and directions.

    Args:
        acts: ``(2 * n_items, L, H, d)`` activations in the fixed layout (module docstring).
        answers: ``(n_items,)`` answers 1..5, 0/NaN = missing.
        K: heads to keep.
        seed: seed of the 60/40 split for the probes.
        val_frac: fraction of items (or samples) held out to rank the probes.
        l2: probe L2 penalty (sklearn ``1/C``).
        steps: Newton steps of the probes.
        head_rank: ``"mean"`` (default, the original's): rank heads by the mean of validation
            and training accuracy; ``"val"``: by validation accuracy alone. Ties: validation
            log-loss, then ``(layer, head)``.
        probe_split: ``"items"`` (default): the split is over items, both samples of an item
            on the same side; ``"samples"``: over the samples, as the original code (the A
            and E samples of one item can fall on both sides).

    Returns:
        A :class:`PASFit`.

    Raises:
        PalignError: bad shapes, or fewer than 2 answered non-neutral items.
    """
    a = _answers_tensor(answers)
    hs = head_score_map(
        acts,
        a,
        seed=seed,
        val_frac=val_frac,
        l2=l2,
        steps=steps,
        head_rank=head_rank,
        probe_split=probe_split,
    )
    heads = rank_heads(hs.score, K, tiebreak=hs.val_loss)
    dirs, sig = mass_mean_directions(acts, hs.labels, heads)  # skips the -1 (unlabelled) samples
    L, H, d = acts.shape[1:]
    val_acc = torch.tensor([float(hs.val_accuracy[lh]) for lh in heads])
    tr_acc = torch.tensor([float(hs.train_accuracy[lh]) for lh in heads])
    usable = hs.usable
    return PASFit(
        heads=heads,
        directions=dirs,
        sigmas=sig,
        val_accuracy=val_acc,
        K=int(K),
        seed=int(seed),
        n_layers=int(L),
        n_heads=int(H),
        head_dim=int(d),
        n_items=int(usable.numel()),
        head_rank=head_rank,
        train_accuracy=tr_acc,
        probe_split=probe_split,
    )


FOLD_HEADS: tuple[str, ...] = ("refit", "final")


def check_fold_heads(value: str) -> str:
    """``refit`` (default: every fold refits the heads too) or ``final`` (every fold keeps the
    final fit's heads and refits only their directions and scales)."""
    if value not in FOLD_HEADS:
        raise PalignError(f"unknown fold heads {value!r}; use refit or final")
    return value


def refit_directions(fit: PASFit, acts: torch.Tensor, answers: Any) -> PASFit:
    """``fit`` with the same heads and new mass-mean directions and scales from ``answers``
    (0/NaN = not used): a fold's refit that keeps the final fit's head choice.

    The probes are not refitted (``val_accuracy`` / ``train_accuracy`` stay the final fit's:
    they rank heads, which are kept)."""
    a = _answers_tensor(answers)
    _check_acts(acts, a.shape[0])
    usable = int(((a > 0) & (a != 3)).sum())
    if usable < 2:
        raise PalignError(
            f"PAS needs at least 2 answered non-neutral items, this fold has {usable}"
        )
    dirs, sig = mass_mean_directions(acts, labels_for(a), fit.heads)
    return replace(fit, directions=dirs, sigmas=sig, n_items=usable)


def _probe_accuracy(
    acts: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """``(L, H)`` accuracy of the fitted probes (``weights (L, H, d)``, ``bias (L, H)``) on the
    samples ``idx`` (prediction: logit > 0, as scikit-learn's ``predict``)."""
    X = acts[idx.to(acts.device)].float()
    z = torch.einsum("nlhd,lhd->lhn", X, weights.to(X.device)) + bias.to(X.device).unsqueeze(-1)
    yy = y[idx].to(z.device).float()
    return ((z > 0).float() == yy).float().mean(dim=-1).cpu()


def shifts(fit: PASFit, alpha: float) -> torch.Tensor:
    """Per-head shifts ``(L, H, d)``: ``alpha * sigma * direction`` on kept heads, 0 elsewhere."""
    delta = torch.zeros(fit.n_layers, fit.n_heads, fit.head_dim)
    for k, (layer, head) in enumerate(fit.heads):
        delta[layer, head] += float(alpha) * fit.sigmas[k] * fit.directions[k]
    return delta


def _w_o_getter(w_o: WoSource) -> Callable[[int], torch.Tensor]:
    if isinstance(w_o, ArchSpec):
        arch = w_o
        # keep W_o where the model keeps it: an 8B layer's W_o is 64 MB in float32, too
        # much to copy to the CPU for every fit
        return lambda layer: arch.w_o(layer, device=arch.modules[layer].weight.device)
    if callable(w_o):
        return w_o
    seq = list(w_o)
    return lambda layer: seq[layer]


def unit_layer_vectors(fit: PASFit, w_o: WoSource) -> torch.Tensor:
    """``u`` at ``alpha = 1``: ``(L, hidden)``, ``u_l = W_o[l] @ shifts(fit, 1)[l].flatten()``.

    Only layers with kept heads read ``W_o``. ``u`` at any alpha is ``alpha`` times this.
    """
    get = _w_o_getter(w_o)
    delta = shifts(fit, 1.0).to(torch.float64)
    layers = sorted({layer for layer, _ in fit.heads})
    rows: dict[int, torch.Tensor] = {}
    hidden = None
    for layer in layers:
        W = get(layer).detach()
        # multiply where W lives (an 8B layer's W_o is 16M entries): float64 on CPU,
        # float32 on accelerators; only the (hidden,) result comes back
        wdt = torch.float64 if W.device.type == "cpu" else torch.float32
        W = W.to(wdt)
        if W.ndim != 2 or W.shape[1] != fit.n_heads * fit.head_dim:
            raise PalignError(
                f"W_o of layer {layer} has shape {tuple(W.shape)}, expected "
                f"(hidden, {fit.n_heads * fit.head_dim}); the adapter was fitted for another model"
            )
        if hidden is not None and W.shape[0] != hidden:
            raise PalignError("W_o of different layers have different hidden sizes")
        hidden = int(W.shape[0])
        rows[layer] = (W @ delta[layer].flatten().to(W.device, wdt)).to("cpu", torch.float64)
    if hidden is None:
        hidden = int(get(0).shape[0])
    u = torch.zeros(fit.n_layers, hidden, dtype=torch.float64)
    for layer, row in rows.items():
        u[layer] = row
    return u.float()


def layer_vectors(fit: PASFit, alpha: float, w_o: WoSource) -> torch.Tensor:
    """Per-layer steering vectors ``(L, hidden)`` at ``alpha`` (see :func:`unit_layer_vectors`)."""
    return float(alpha) * unit_layer_vectors(fit, w_o)


def layer_vectors_grid(fit: PASFit, alphas: Sequence[float], w_o: WoSource) -> torch.Tensor:
    """``(n_alpha, L, hidden)``: :func:`layer_vectors` for every alpha of ``alphas``."""
    unit = unit_layer_vectors(fit, w_o)
    return torch.stack([float(a) * unit for a in alphas])


def _errors(pred: Any, truth: torch.Tensor, n_alpha: int) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(pred, dtype=np.float64))
    if p.shape != (n_alpha, truth.shape[0]):
        raise PalignError(
            f"score_fn returned shape {tuple(p.shape)}, expected ({n_alpha}, {truth.shape[0]}) "
            "(alphas, items)"
        )
    err = (p - truth.unsqueeze(0)).abs()
    unparsed = ~torch.isfinite(p) | (p < 1) | (p > 5)
    return torch.where(unparsed, torch.full_like(err, UNPARSED_ERROR), err)


def seeded_item_order(item_ids: Sequence[str], seed: int = 0) -> list[int]:
    """Positions of ``item_ids`` ordered by a seeded hash of each id (``sha256("seed:id")``).

    An item's rank does not depend on the order of the ids. :func:`fold_assignment` deals
    folds from this order, and the training baselines' held-out items
    (:func:`palign.train.select.heldout_split`) are its first ones.
    """
    keys = [hashlib.sha256(f"{seed}:{iid}".encode()).hexdigest() for iid in item_ids]
    return sorted(range(len(keys)), key=lambda i: (keys[i], i))


def fold_assignment(
    n_items: int,
    k_folds: int,
    seed: int = 0,
    item_ids: Sequence[str] | None = None,
) -> list[list[int]]:
    """Seeded folds over item positions ``0..n_items-1`` (sorted within each fold).

    With ``item_ids`` the order comes from a seeded hash of each id, so an item's fold does
    not depend on the order of the items; otherwise from a seeded permutation.
    """
    if n_items < 2:
        raise PalignError(f"cross-validation needs at least 2 answered items, got {n_items}")
    k = max(2, min(int(k_folds), n_items))
    if item_ids is not None:
        if len(item_ids) != n_items:
            raise PalignError(f"{len(item_ids)} item ids for {n_items} items")
        order = seeded_item_order(item_ids, seed)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(n_items, generator=gen).tolist()
    return [sorted(order[f::k]) for f in range(k)]


def select_alpha(
    acts: torch.Tensor,
    answers: Any,
    score_fn: ScoreFn,
    w_o: WoSource,
    *,
    grid: Sequence[float] = DEFAULT_ALPHAS,
    k_folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    K: int = DEFAULT_K,
    item_ids: Sequence[str] | None = None,
    head_rank: str = DEFAULT_HEAD_RANK,
    probe_split: str = DEFAULT_PROBE_SPLIT,
    fold_heads: str = "refit",
) -> tuple[float, dict[float, float]]:
    """Choose alpha by seeded k-fold cross-validation over the *shown* items.

    For each fold, PAS is refitted on the other folds' items (the held-out items' answers are
    masked, so their samples are not used), steering vectors for every alpha of ``grid`` are
    built, and ``score_fn(u_by_alpha, held_out)`` predicts the held-out items. The error of
    an alpha is the mean absolute error over all held-out items of all folds (an
    unparsed/out-of-range prediction counts as the maximal error 4). Ties go to the smaller
    alpha. Test items never enter: ``acts``/``answers`` hold shown items only, and
    ``held_out`` are positions into them.

    Args:
        acts: ``(2 * n_shown, L, H, d)`` activations of the shown items (fixed layout).
        answers: ``(n_shown,)`` the person's shown answers, 0/NaN = missing.
        score_fn: ``(u_by_alpha (n_alpha, L, hidden), held_out: list[int]) ->
            (n_alpha, len(held_out))`` predicted answers.
        w_o: ``W_o`` source (:data:`WoSource`).
        grid: candidate alphas.
        k_folds: folds (default 3; clipped to the number of answered items).
        seed: seed of the folds and of the probe splits.
        K: heads to keep.
        item_ids: optional ids of the shown items (fold assignment by id, see
            :func:`fold_assignment`).
        head_rank: head ranking of the refits (see :func:`fit_person`).
        probe_split: probe split of the refits (see :func:`fit_person`).
        fold_heads: ``"refit"`` (default, the original's protocol applied per fold: a fold
            refits the heads too) or ``"final"``: every fold keeps the heads of the fit on
            all shown items and refits only their directions and scales
            (:func:`refit_directions`). The held-out items' answers still never enter a
            fold's directions, but they did take part in choosing the heads.

    Returns:
        ``(alpha, {alpha: mean absolute error})``.
    """
    check_fold_heads(fold_heads)
    alphas = [float(x) for x in grid]
    if not alphas:
        raise PalignError("the alpha grid is empty; give at least one alpha")
    a = _answers_tensor(answers)
    _check_acts(acts, a.shape[0])
    if item_ids is not None and len(item_ids) != a.shape[0]:
        raise PalignError(f"{len(item_ids)} item ids for {a.shape[0]} answers")
    answered = torch.nonzero(a > 0).flatten()
    ids = [str(item_ids[i]) for i in answered.tolist()] if item_ids is not None else None
    folds = fold_assignment(answered.numel(), k_folds, seed, ids)
    total = torch.zeros(len(alphas), dtype=torch.float64)
    count = 0
    kw = {"K": K, "seed": seed, "head_rank": head_rank, "probe_split": probe_split}
    final = fit_person(acts, a, **kw) if fold_heads == "final" else None
    for fold in folds:
        held = answered[torch.tensor(fold, dtype=torch.long)]
        train_answers = a.clone()
        train_answers[held] = 0.0
        if final is not None:
            fit = refit_directions(final, acts, train_answers)
        else:
            fit = fit_person(acts, train_answers, **kw)
        u = layer_vectors_grid(fit, alphas, w_o)
        held_list = held.tolist()
        pred = score_fn(u, held_list)
        total += _errors(pred, a[held], len(alphas)).sum(dim=1)
        count += len(held_list)
    errors = {al: float(total[i] / count) for i, al in enumerate(alphas)}
    best = min(alphas, key=lambda al: (errors[al], al))
    return best, errors


def ranks_behind(
    grid: Sequence[float], running: Sequence[float], complete: Sequence[bool], live: Sequence[bool]
) -> list[int]:
    """Alphas of an ongoing held-out search that can no longer be chosen.

    ``running[i]``: alpha ``grid[i]``'s error so far (the final error's formula over the items
    read so far; non-negative terms, so it only grows); ``complete[i]``: every fold read. The
    choice is the minimum of ``(error, alpha)`` (ties to the smaller alpha); an incomplete live
    alpha whose ``(running, alpha)`` is already greater than the best complete live alpha's
    can only end greater, so it is returned. An alpha smaller than that best with an equal
    running error is kept: it could still win the tie.
    """
    done = [i for i in range(len(grid)) if live[i] and complete[i]]
    if not done:
        return []
    best = min(done, key=lambda i: (running[i], grid[i]))
    bar = (running[best], grid[best])
    return [
        i for i in range(len(grid)) if live[i] and not complete[i] and (running[i], grid[i]) > bar
    ]


def oracle_alpha(
    fit: PASFit,
    w_o: WoSource,
    score_fn: ScoreFn,
    test_answers: Any,
    grid: Sequence[float] = DEFAULT_ALPHAS,
) -> tuple[float, dict[float, float]]:
    """ORACLE: choose alpha by the error on the *test* items (only when explicitly asked).

    This peeks at the answers being predicted; results obtained this way are an upper bound,
    not an honest evaluation. ``score_fn(u_by_alpha, test_indices)`` gets positions into
    ``test_answers``; missing test answers are skipped. The error is the MAE pooled over the
    test items, an unparsed prediction counting as the maximal error 4 (as in
    :func:`select_alpha`; the original code left unparsed answers out of per-trait means).

    Returns:
        ``(alpha, {alpha: mean absolute error on the test items})``.
    """
    alphas = [float(x) for x in grid]
    if not alphas:
        raise PalignError("the alpha grid is empty; give at least one alpha")
    t = _answers_tensor(test_answers)
    idx = torch.nonzero(t > 0).flatten()
    if idx.numel() == 0:
        raise PalignError("oracle alpha selection needs answered test items")
    u = layer_vectors_grid(fit, alphas, w_o)
    err = _errors(score_fn(u, idx.tolist()), t[idx], len(alphas)).mean(dim=1)
    errors = {al: float(err[i]) for i, al in enumerate(alphas)}
    best = min(alphas, key=lambda al: (errors[al], al))
    return best, errors


@dataclass
class PASResult:
    """A fitted PAS adapter for one person (before saving).

    Attributes:
        fit: heads and directions fitted on all shown items.
        alpha: the chosen alpha.
        alpha_selection: ``"heldout-kfold"``, ``"tuned"`` (a rule tuned on development
            persons, :mod:`palign.methods.alpha_rules`) or ``"fixed"`` (or ``"oracle"``).
        validation_errors: alpha -> held-out MAE (empty for ``"fixed"``).
        u: ``(L, hidden)`` steering vectors at ``alpha``.
        u_unit: ``(L, hidden)`` steering vectors at ``alpha = 1``.
    """

    fit: PASFit
    alpha: float
    alpha_selection: str
    validation_errors: dict[float, float]
    u: torch.Tensor
    u_unit: torch.Tensor


def fit_pas(
    acts: torch.Tensor,
    answers: Any,
    w_o: WoSource,
    *,
    alpha: float | None = None,
    score_fn: ScoreFn | None = None,
    grid: Sequence[float] = DEFAULT_ALPHAS,
    k_folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    K: int = DEFAULT_K,
    item_ids: Sequence[str] | None = None,
    head_rank: str = DEFAULT_HEAD_RANK,
    probe_split: str = DEFAULT_PROBE_SPLIT,
    fold_heads: str = "refit",
) -> PASResult:
    """Fit PAS on all shown items; alpha fixed, or selected by :func:`select_alpha`.

    Args:
        acts: ``(2 * n_shown, L, H, d)`` shown-item activations (fixed layout).
        answers: ``(n_shown,)`` shown answers.
        w_o: ``W_o`` source.
        alpha: a fixed alpha (``alpha_selection="fixed"``); ``None`` = cross-validate
            over ``grid`` with ``score_fn`` (``"heldout-kfold"``).
        score_fn: required when ``alpha`` is ``None``.
        grid, k_folds, seed, K, item_ids, head_rank, probe_split, fold_heads: as in
            :func:`select_alpha`.
    """
    if alpha is None:
        if score_fn is None:
            raise PalignError("alpha selection needs a score_fn (or give a fixed alpha)")
        chosen, errors = select_alpha(
            acts,
            answers,
            score_fn,
            w_o,
            grid=grid,
            k_folds=k_folds,
            seed=seed,
            K=K,
            item_ids=item_ids,
            head_rank=head_rank,
            probe_split=probe_split,
            fold_heads=fold_heads,
        )
        how = "heldout-kfold"
    else:
        if not math.isfinite(float(alpha)):
            raise PalignError(f"alpha must be a finite number, got {alpha}")
        chosen, errors, how = float(alpha), {}, "fixed"
    fit = fit_person(acts, answers, K=K, seed=seed, head_rank=head_rank, probe_split=probe_split)
    unit = unit_layer_vectors(fit, w_o)
    return PASResult(
        fit=fit,
        alpha=chosen,
        alpha_selection=how,
        validation_errors=errors,
        u=chosen * unit,
        u_unit=unit,
    )


def fold_stability(
    acts: torch.Tensor,
    answers: Any,
    w_o: WoSource,
    *,
    k_folds: int = 3,
    seed: int = 0,
    K: int = DEFAULT_K,
    item_ids: Sequence[str] | None = None,
    head_rank: str = DEFAULT_HEAD_RANK,
    probe_split: str = DEFAULT_PROBE_SPLIT,
) -> float:
    """How stable a person's steering direction is: the mean cosine between each fold's
    steering vectors (``u`` at alpha 1 of a refit without that fold's items, all layers
    flattened) and the final fit's on all shown items.

    Reads no model and no test item: the same seeded folds and refits as
    :func:`select_alpha`. Near 1: the shown items pin the direction down; near 0: a third of
    them less gives another direction, so the final one is mostly noise.
    """
    a = _answers_tensor(answers)
    _check_acts(acts, a.shape[0])
    kw = {"K": K, "seed": seed, "head_rank": head_rank, "probe_split": probe_split}
    final = unit_layer_vectors(fit_person(acts, a, **kw), w_o).double().flatten()
    answered = torch.nonzero(a > 0).flatten()
    ids = [str(item_ids[i]) for i in answered.tolist()] if item_ids is not None else None
    cosines = []
    for fold in fold_assignment(answered.numel(), k_folds, seed, ids):
        train = a.clone()
        train[answered[torch.tensor(fold, dtype=torch.long)]] = 0.0
        u = unit_layer_vectors(fit_person(acts, train, **kw), w_o).double().flatten()
        cosines.append(float(torch.nn.functional.cosine_similarity(u, final, dim=0)))
    return float(sum(cosines) / len(cosines))
