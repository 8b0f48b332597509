"""PAS steering: architecture table, activation capture, probes, interventions, adapters.

See ``docs/pas.md`` for the method and ``docs/architecture.md`` for the contracts.
"""

from __future__ import annotations

from palign.steering.adapter import PASAdapter, load_adapter, save_adapter
from palign.steering.arch import ARCH_TABLE, ArchEntry, ArchSpec, resolve_arch
from palign.steering.capture import (
    activations_cache_dir,
    cache_key,
    cached_activations,
    capture_head_activations,
    capture_prompts,
    text_sha256,
)
from palign.steering.intervene import Steerer, steer, steer_heads
from palign.steering.pas import (
    DEFAULT_ALPHAS,
    DEFAULT_K,
    PASFit,
    PASResult,
    fit_pas,
    fit_person,
    labels_for,
    layer_vectors,
    layer_vectors_grid,
    oracle_alpha,
    select_alpha,
    shifts,
    unit_layer_vectors,
)
from palign.steering.probes import fit_probes, fit_probes_full, mass_mean_directions, rank_heads

__all__ = [
    "ARCH_TABLE",
    "DEFAULT_ALPHAS",
    "DEFAULT_K",
    "ArchEntry",
    "ArchSpec",
    "PASAdapter",
    "PASFit",
    "PASResult",
    "Steerer",
    "activations_cache_dir",
    "cache_key",
    "cached_activations",
    "capture_head_activations",
    "capture_prompts",
    "fit_pas",
    "fit_person",
    "fit_probes",
    "fit_probes_full",
    "labels_for",
    "layer_vectors",
    "layer_vectors_grid",
    "load_adapter",
    "mass_mean_directions",
    "oracle_alpha",
    "rank_heads",
    "resolve_arch",
    "save_adapter",
    "select_alpha",
    "shifts",
    "steer",
    "steer_heads",
    "text_sha256",
    "unit_layer_vectors",
]
