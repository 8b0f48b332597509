"""Align a new person from their answers on the served base model (``POST /v1/personalities``).

The same steps as ``palign align --answers FILE`` (PAS, alpha chosen on held-out answered
items), on the model already in memory.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from palign.errors import PalignError
from palign.models.loading import LoadedModel

__all__ = ["align_answers"]


def align_answers(
    lm: LoadedModel,
    answers: Mapping[str, int],
    out: str | Path,
    *,
    inventory: str = "ipip-neo",
    semantics: str = "agreement",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    data: str | Path | None = None,
    method: str = "pas",
) -> Path:
    """Fit a PAS adapter for ``answers`` (item id -> 1..5) on ``lm`` and save it in ``out``.

    Args:
        lm: the base model (the caller keeps other users of the model out meanwhile).
        answers: the person's answers to the statements (5 = Very Accurate).
        out: adapter folder to write.
        inventory: ``"ipip-neo"`` (needs the PAPI item file: ``data`` or ``$PALIGN_DATA``)
            or ``"sd3"``.
        semantics: answer semantics.
        seed: seed of probe splits and folds.
        options: PAS options (``k``, ``alpha_grid``, ``folds``...), as ``palign align``.
        data: PAPI data folder.
        method: ``"pas"`` or ``"pas+few-shot"``.

    Raises:
        PalignError: bad answers, missing item file, or a failed fit.
    """
    from palign.data import check_inventory, check_semantics
    from palign.data.answers import person_from_answers, read_answers_file
    from palign.data.types import Dataset
    from palign.methods import MethodConfig, get_method
    from palign.steering.adapter import save_adapter

    check_inventory(inventory)
    sem = check_semantics(semantics)
    if inventory == "ipip-neo":
        from palign.data import resolve_data_dir
        from palign.data.papi import ipip_inventory

        base_inv = ipip_inventory(resolve_data_dir(data, "ipip-neo"))
    else:
        from palign.data.sd3 import sd3_inventory

        base_inv = sd3_inventory()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "answers.json"
        path.write_text(json.dumps(dict(answers)), encoding="utf-8")
        parsed = read_answers_file(path, base_inv)
    if len(parsed) < 4:
        raise PalignError("give at least 4 answers to align a person (PAS needs contrast)")
    inv, person = person_from_answers(base_inv, parsed)
    ds = Dataset(inv, [person], source="answers upload")
    m = get_method(method, MethodConfig(sem, seed, dict(options or {})))
    t = time.perf_counter()
    m.setup(lm, ds)
    res = m.fit_result(lm, ds, person)
    extra = {
        "method": method,
        "model_spec": lm.spec,
        "system_prompt": m.system_prompt(ds, person),
        "alpha_grid": m.grid,
        "folds": m.folds,
        "steer_position": m.position,
        "shown_items": ds.inventory.shown_ids,
        "seconds": round(time.perf_counter() - t, 2),
        "source": "palign serve POST /v1/personalities",
    }
    return save_adapter(
        out,
        res,
        model_id=lm.model_id,
        arch=m.arch,
        revision=lm.revision,
        inventory=ds.inventory.name,
        semantics=sem,
        person="answers-file",
        extra=extra,
    )
