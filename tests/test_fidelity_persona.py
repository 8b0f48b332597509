"""P² persona vs answer semantics: the release personas were written from the stored values
(paper semantics); under agreement semantics the persona comes from the person's answers."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from palign.cli import main
from palign.data.types import Dataset
from palign.errors import PalignError
from palign.methods import MethodConfig, get_method
from palign.methods.personality_prompt import answers_persona, persona_request
from palign.models.loading import LoadedModel
from palign.models.prompts import OPTION_TEXTS


def _trait_means(ds: Dataset, person) -> dict[str, tuple[float, dict[str, float]]]:  # type: ignore[no-untyped-def]
    """Independent re-statement: agreement answer = 6 - v for reverse-keyed items (v = stored,
    PAPI stores trait direction), trait direction = the answer for "+" items, 6 - answer for
    "-" items; plain means per trait and facet over the answered shown items."""
    inv = ds.inventory
    tr: dict[str, list[float]] = {}
    fa: dict[str, list[float]] = {}
    for iid in inv.shown_ids:
        v = person.stored.get(iid, 0)
        if not v:
            continue
        it = inv.item(iid)
        agreement = 6 - v if it.key < 0 else v
        trait_dir = agreement if it.key > 0 else 6 - agreement
        tr.setdefault(it.trait, []).append(trait_dir)
        fa.setdefault(it.facet, []).append(trait_dir)
    return {
        t: (
            float(np.mean(vs)),
            {f: float(np.mean(x)) for f, x in fa.items() if f.startswith(t)},
        )
        for t, vs in tr.items()
    }


def _word(score: float) -> str:
    return (
        "very low"
        if score < 1.5
        else "low"
        if score < 2.5
        else "average"
        if score < 3.5
        else "high"
        if score < 4.5
        else "very high"
    )


def test_release_personas_were_written_from_the_stored_values(
    papi_dir: Path, papi: Dataset
) -> None:
    """The release's request text (``input``) equals the request under *paper* semantics for
    every person, and differs from the agreement-semantics one wherever a reverse-keyed shown
    item has a non-neutral answer: the release persona contradicts the person there."""
    release = json.loads((papi_dir / "personality_prompt.json").read_text(encoding="utf-8"))
    inv = papi.inventory
    for person, rec in zip(papi.persons, release):
        # the release lists a missing answer as "Unknown" (SCORES_BACK[0]); palign leaves it out
        pairs = [x for x in rec["input"].split(";") if not x.endswith(":Unknown")]
        assert ";".join(pairs) == persona_request(inv, person, "paper")
        assert rec["input"] != persona_request(inv, person, "agreement")
    person = papi.persons[0]
    rev = next(i for i in inv.shown_ids if inv.item(i).key < 0 and person.stored[i] not in (0, 3))
    v, text = person.stored[rev], inv.item(rev).text
    assert f"{text}:{OPTION_TEXTS[5 - v]}" in release[0]["input"]  # stored value shown
    assert f"{text}:{OPTION_TEXTS[5 - (6 - v)]}" in persona_request(inv, person, "agreement")


def test_answers_persona_agrees_with_the_agreement_trait_means(papi: Dataset) -> None:
    inv = papi.inventory
    names = {it.facet: it.facet_name.lower() for it in inv.items}
    for person in papi.persons[:25]:
        text = answers_persona(inv, person, "agreement")
        assert text == answers_persona(inv, person, "paper")  # trait direction: same values
        for t, (mean, facets) in _trait_means(papi, person).items():
            name = inv.trait_names[t].lower()
            m = re.search(rf"Your {name} is ([a-z ]+) \(([0-9.]+)\)", text)
            assert m, (name, text)
            assert m.group(1) == _word(mean) and float(m.group(2)) == pytest.approx(mean, abs=5e-3)
            for f, fm in facets.items():
                assert f"{_word(fm)} in {names[f]} ({fm:.2f})" in text


def test_reverse_keyed_answers_set_the_persona_direction(papi: Dataset) -> None:
    """A person who strongly agrees with every reverse-keyed neuroticism statement ("Rarely
    get irritated", ...) and leaves the others unanswered is low in neuroticism: the persona
    says so (the release-style request would have told the writer the opposite)."""
    inv = papi.inventory
    p = copy.deepcopy(papi.persons[0])
    rev = [i for i in inv.shown_ids if inv.item(i).trait == "N" and inv.item(i).key < 0]
    fwd = [i for i in inv.shown_ids if inv.item(i).trait == "N" and inv.item(i).key > 0]
    assert rev and fwd
    for i in fwd:
        p.stored[i] = 0
    for i in rev:
        p.stored[i] = 1  # trait direction 1 = agreement answer 5 to the reverse-keyed statement
    assert all(a == 5 for i, a in p.answers(inv, "agreement", rev).items())
    text = answers_persona(inv, p, "agreement")
    assert "Your neuroticism is very low (1.00)" in text
    req = persona_request(inv, p, "paper")
    assert all(f"{inv.item(i).text}:Very Inaccurate" in req for i in rev)  # the contradiction


def test_method_source_follows_the_semantics(papi: Dataset, tiny_lm: LoadedModel) -> None:
    person = papi.persons[0]
    agree = get_method("personality-prompt", MethodConfig("agreement"))
    a = agree.fit(tiny_lm, papi, person)
    assert a.info["persona_source"] == "answers" and agree.record()["persona_source"] == "answers"
    assert a.system_prompt == answers_persona(papi.inventory, person, "agreement")
    paper = get_method("personality-prompt", MethodConfig("paper"))
    b = paper.fit(tiny_lm, papi, person)
    assert b.info["persona_source"] == "release" and b.system_prompt == person.persona
    assert paper.record()["persona_source"] == "release"
    no_persona = copy.deepcopy(person)
    no_persona.persona = None
    c = paper.fit(tiny_lm, papi, no_persona)  # default under paper: answers where none exists
    assert c.info["persona_source"] == "answers" and "no release persona" in c.info["note"]
    explicit = get_method(
        "personality-prompt", MethodConfig("paper", 0, {"persona_source": "release"})
    )
    with pytest.raises(PalignError, match="no release persona"):
        explicit.fit(tiny_lm, papi, no_persona)
    with pytest.raises(PalignError, match="contradict agreement-semantics"):
        get_method(
            "personality-prompt", MethodConfig("agreement", 0, {"persona_source": "release"})
        )
    with pytest.raises(PalignError, match="unknown persona source"):
        get_method("personality-prompt", MethodConfig("agreement", 0, {"persona_source": "x"}))
    m = get_method("personality-prompt", MethodConfig("agreement", 0, {"persona_model": "m"}))
    assert m.record()["persona_source"] == "model"


def test_cli_refuses_release_personas_under_agreement(papi_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["eval", "--method", "personality-prompt", "--data", str(papi_dir), "--persons", "1"]
    assert main([*argv, "--persona-source", "release", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("palign: error: the release personas")
