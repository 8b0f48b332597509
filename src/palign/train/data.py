"""Training data of one person, from the 120 *shown* items only (never the test items).

- DPO pairs (:func:`dpo_pairs`): one per shown statement the person answered with something
  other than 3. The prompt is palign's logits-readout prompt (task template, neutral system
  prompt, assistant turn prefilled with ``"Option ("``); *chosen* is the option matching the
  person's answer ``v`` (e.g. ``"B). Moderately Accurate"``), *rejected* the mirrored option
  ``6 - v``. Neutral (3) and missing answers are dropped.
- RL prompts (:func:`rl_prompts`): the generate-readout prompt (prefill ``"Option"``, as the
  paper's code) of every answered shown statement, with the person's answer for the reward
  (:func:`answer_reward`: ``-|parsed - answer|``, a fixed penalty when nothing parses).

Answers are taken under the run's semantics (agreement by default), the same scale the
readout is scored on.

TRL (1.x) tokenizes plain-text prompts with ``tokenizer(text=prompt)``, which adds the
tokenizer's special tokens; a chat template that renders BOS into the text (Llama-3, Gemma)
would then train on ``[BOS, BOS, ...]`` while the readout reads one BOS.
:func:`trainer_text` gives TRL the prompt whose tokenization equals the readout's
(:func:`palign.models.prompts.encode_prompt`), checked token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from palign.data.types import Dataset, Person, Semantics
from palign.errors import PalignError
from palign.models.prompts import (
    OPTION_LETTERS,
    OPTION_TEXTS,
    build_generate_prompt,
    build_prompt,
    encode_prompt,
)


def trainer_text(tokenizer: Any, prompt: str) -> str:
    """The prompt text to hand TRL so that TRL's tokenization equals the readout's.

    TRL 1.x tokenizes a plain-text prompt as ``tokenizer(text=prompt)`` (special tokens
    added); the readout encodes it with :func:`~palign.models.prompts.encode_prompt` (no
    special tokens added to chat-template text, which already holds them). When the template
    rendered the BOS the tokenizer adds itself (Llama-3, Gemma), it is cut from the text here,
    so TRL's ids are ``[BOS, ...]`` once, like the readout's. Raises :class:`PalignError` when
    no such text exists (a tokenizer that adds special tokens the template does not render).
    """
    want = list(encode_prompt(tokenizer, prompt))
    candidates = [prompt]
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prompt.startswith(bos):
        candidates.insert(0, prompt[len(bos) :])
    got: list[int] = []
    for text in candidates:
        got = list(tokenizer(text=text).input_ids)
        if got == want:
            return text
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise PalignError(
        f"the tokenizer of {name} adds special tokens the chat template does not render "
        f"(training would see {got[:3]}..., the readout {want[:3]}...); palign cannot hand "
        "TRL this model's prompts unchanged, use a model whose tokenizer adds only BOS"
    )


def option_completion(answer: int, form: str = "option") -> str:
    """The completion after ``"Option ("`` for an answer 1..5: ``form="option"`` gives
    4 -> ``"B). Moderately Accurate"``, ``form="letter"`` gives ``"B"``."""
    k = 5 - int(answer)
    return OPTION_LETTERS[k] if form == "letter" else f"{OPTION_LETTERS[k]}). {OPTION_TEXTS[k]}"


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example (``item`` is kept for audits; TRL reads prompt/chosen/rejected)."""

    item: str
    prompt: str
    chosen: str
    rejected: str
    answer: int


def shown_answers(
    dataset: Dataset,
    person: Person,
    semantics: Semantics,
    items: Sequence[str] | None = None,
) -> dict[str, int]:
    """The person's answers to the shown items (item id -> 1..5), missing ones left out.

    ``items``: only these shown items (the training part when some are held out); an item
    that is not a shown item raises :class:`PalignError` (test items never reach a trainer).
    """
    inv = dataset.inventory
    ids = list(inv.shown_ids)
    if items is not None:
        shown = set(ids)
        bad = [i for i in items if i not in shown]
        if bad:
            raise PalignError(f"item {bad[0]} is not a shown item; training uses shown items only")
        keep = set(items)
        ids = [i for i in ids if i in keep]
    return person.answers(inv, semantics, ids)


def _nothing_to_train(person: Person, what: str, items: Sequence[str] | None) -> PalignError:
    if items is None:
        return PalignError(
            f"person {person.id} has no non-neutral shown answer (nothing to train on); "
            f"{what} needs shown answers other than 3"
        )
    return PalignError(
        f"person {person.id} has no non-neutral answer among the {len(items)} shown items left "
        "for training after holding out items for step selection; lower --heldout-fraction or "
        "give --train-select none"
    )


def dpo_pairs(
    tokenizer: Any,
    dataset: Dataset,
    person: Person,
    semantics: Semantics = "agreement",
    system_prompt: str | None = None,
    completion: str = "option",
    items: Sequence[str] | None = None,
) -> list[PreferencePair]:
    """DPO pairs of one person from the shown items; :class:`PalignError` when there are none.

    ``completion``: ``"option"`` (letter + option text) or ``"letter"`` (the letter alone).
    ``items``: only these shown items (e.g. the training part of
    :func:`palign.train.select.heldout_split`); default all shown items.
    """
    inv = dataset.inventory
    pairs = []
    for iid, v in shown_answers(dataset, person, semantics, items).items():
        if v == 3:
            continue
        prompt = build_prompt(tokenizer, system_prompt, inv.statement(inv.item(iid)))
        pairs.append(
            PreferencePair(
                iid,
                prompt,
                option_completion(v, completion),
                option_completion(6 - v, completion),
                v,
            )
        )
    if not pairs:
        raise _nothing_to_train(person, "DPO", items)
    return pairs


@dataclass(frozen=True)
class RLPrompt:
    """One RL prompt with the person's answer (the reward's target)."""

    item: str
    prompt: str
    answer: int


def rl_prompts(
    tokenizer: Any,
    dataset: Dataset,
    person: Person,
    semantics: Semantics = "agreement",
    system_prompt: str | None = None,
    items: Sequence[str] | None = None,
) -> list[RLPrompt]:
    """Generate-readout prompts of the person's answered shown items (``items``: only these).

    Raises :class:`PalignError` when the person has no non-neutral shown answer (a person who
    answered 3 everywhere gives no signal that differs from "always C").
    """
    inv = dataset.inventory
    answers = shown_answers(dataset, person, semantics, items)
    if not any(v != 3 for v in answers.values()):
        raise _nothing_to_train(person, "RL training", items)
    return [
        RLPrompt(
            iid, build_generate_prompt(tokenizer, system_prompt, inv.statement(inv.item(iid))), v
        )
        for iid, v in answers.items()
    ]


def answer_reward(
    completions: Sequence[str], answer: Sequence[int], unparsed_penalty: float = -6.0
) -> list[float]:
    """``-|parsed answer - person's answer|`` per completion; ``unparsed_penalty`` if unparsed
    (-6, the paper's appendix: below every parsed answer's reward)."""
    from palign.models.readout import parse_answer

    out = []
    for text, a in zip(completions, answer):
        got = parse_answer(text if isinstance(text, str) else str(text))
        out.append(float(unparsed_penalty) if got is None else -abs(float(got) - float(a)))
    return out


def dpo_rows(tokenizer: Any, pairs: Sequence[PreferencePair]) -> list[dict[str, str]]:
    """The rows ``trl.DPOTrainer`` gets: prompt (see :func:`trainer_text`), chosen, rejected."""
    return [
        {"prompt": trainer_text(tokenizer, p.prompt), "chosen": p.chosen, "rejected": p.rejected}
        for p in pairs
    ]


def grpo_rows(tokenizer: Any, prompts: Sequence[RLPrompt]) -> list[dict[str, Any]]:
    """The rows ``trl.GRPOTrainer`` gets: prompt (see :func:`trainer_text`) and the answer."""
    return [{"prompt": trainer_text(tokenizer, p.prompt), "answer": p.answer} for p in prompts]
