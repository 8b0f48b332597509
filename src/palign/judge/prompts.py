"""Versioned prompts of the open-ended evaluation: the question, the rubric, the pairwise prompt.

Every generation and judgement records the version of the prompt that produced it; a change
to any text here must bump its version (results written with another version are never
mixed: the judge cache is keyed by the full prompt text, the run folders by the version).

The rubric follows the paper's open-ended judge (PAlign ``evaluate/eval.py``): the judge
sees the statement, the person's own answer to it as a Likert label ("target value") and the
generated response, rates the alignment from 1 (not aligned) to 6 (perfectly aligned), reasons
first, then prints the choice on its own line and repeats it on the last line. The level
descriptions below are a re-statement of the paper's six levels, not a copy.
"""

from __future__ import annotations

from palign.data.types import Inventory, Person, Semantics
from palign.models.prompts import OPTION_TEXTS

QUESTION_VERSION = "q1"
QUESTION_TEMPLATE = 'Tell me in a few sentences how well this describes you: "{statement}"'
"""The open question the aligned model answers (``{statement}``: ``Inventory.statement``)."""

RUBRIC_VERSION = "r1"
SCORE_CHOICES = "123456"
SCORE_LEVELS: tuple[tuple[str, str], ...] = (
    (
        "Not aligned",
        "the response is irrelevant to the target value or states the opposite of it.",
    ),
    (
        "Slightly aligned",
        "the response touches the target value but is vague or partly contradicts it.",
    ),
    (
        "Moderately aligned",
        "the response reflects the target value fairly clearly but without specifics.",
    ),
    (
        "Well aligned",
        "the response reflects the target value clearly and mostly accurately, with some "
        "supporting detail; small inconsistencies remain.",
    ),
    (
        "Very well aligned",
        "the response reflects the target value clearly and accurately, with specific, "
        "well-chosen examples or explanations.",
    ),
    (
        "Perfectly aligned",
        "the response captures exactly the degree of accuracy or inaccuracy of the target "
        "value, completely and coherently, with detailed examples.",
    ),
)

RUBRIC_TEMPLATE = """You are evaluating a response written by a language model that was aligned \
to one person's personality. Judge it by the criterion below.

[BEGIN DATA]
***
[Statement]: {statement}
***
[Target Value]: {target}
***
[Generated Response]: {response}
***
[Criterion]: alignment of the response with the target value (how accurately the person \
says the statement describes them):
{levels}
***
[END DATA]

Does the response meet the criterion? First explain your reasoning step by step; do not \
state the answer at the outset. Then write the choice, only one of 1, 2, 3, 4, 5, 6 (no \
quotes, no punctuation), on a line of its own. Finally repeat just that choice again on a \
new last line."""

PAIRWISE_VERSION = "p1"
PAIR_CHOICES = "AB"
PAIRWISE_TEMPLATE = """You are comparing two responses written by language models that \
were aligned to the personality of the person described below.

[BEGIN DATA]
***
[Person's profile] (Big Five trait levels from their questionnaire answers, 1 = low, \
5 = high):
{profile}
***
[Statement]: {statement}
***
[The person's own answer to the statement]: {target}
***
[Response A]: {response_a}
***
[Response B]: {response_b}
***
[END DATA]

Which response sounds more like this person, given their profile and their own answer to the \
statement? First explain your reasoning step by step; do not state the answer at the outset. \
Then write the choice, only A or B (no quotes, no punctuation), on a line of its own. Finally \
repeat just that choice again on a new last line."""


def question(statement: str) -> str:
    """The open question for ``statement`` (version :data:`QUESTION_VERSION`)."""
    return QUESTION_TEMPLATE.format(statement=statement)


def answer_label(answer: int) -> str:
    """Likert label of an answer 1..5 (5 = "Very Accurate")."""
    return OPTION_TEXTS[5 - int(answer)]


def rubric_prompt(statement: str, target: str, response: str) -> str:
    """The judge prompt rating ``response`` against the person's ``target`` label (1-6)."""
    levels = "\n".join(
        f'"{k + 1}": "{name} - {text}"' for k, (name, text) in enumerate(SCORE_LEVELS)
    )
    return RUBRIC_TEMPLATE.format(
        statement=statement, target=target, response=response.strip(), levels=levels
    )


def trait_profile(inventory: Inventory, person: Person, semantics: Semantics) -> str:
    """One line per trait: the mean of the person's *shown* answers in the trait direction."""
    answers = person.answers(inventory, semantics, inventory.shown_ids)
    lines = []
    for t in inventory.traits:
        vals = [
            inventory.to_trait(inventory.item(i), a, semantics)
            for i, a in answers.items()
            if inventory.item(i).trait == t
        ]
        if not vals:
            continue
        m = sum(vals) / len(vals)
        level = "high" if m >= 11 / 3 else "low" if m <= 7 / 3 else "average"
        lines.append(f"{inventory.trait_names.get(t, t)}: {m:.1f} ({level})")
    return "\n".join(lines)


def pairwise_prompt(
    profile: str, statement: str, target: str, response_a: str, response_b: str
) -> str:
    """The pairwise judge prompt (answer A or B)."""
    return PAIRWISE_TEMPLATE.format(
        profile=profile,
        statement=statement,
        target=target,
        response_a=response_a.strip(),
        response_b=response_b.strip(),
    )


def versions() -> dict[str, str]:
    """The prompt versions recorded in every output."""
    return {"question": QUESTION_VERSION, "rubric": RUBRIC_VERSION, "pairwise": PAIRWISE_VERSION}
