"""Versioned prompts of the open-ended evaluation: the question, the rubric, the pairwise prompt.

Every generation and judgement records the version of the prompt that produced it; a change
to any text here must bump its version (results written with another version are never
mixed: the judge cache is keyed by the full prompt text, the run folders by the version).

The rubric follows the paper's open-ended judge (PAlign ``evaluate/gpt4eval.py``): the judge
sees the statement, the person's own answer to it as a Likert label ("target value") and the
generated response and rates the alignment from 1 (not aligned) to 6 (perfectly aligned). The
level descriptions below are a re-statement of the paper's six levels, not a copy. Two
protocols (:data:`PROTOCOLS`) ask for the rating:

- ``score-first`` (default; G-Eval style): the rubric, then the reply must *start* with the
  digit. The probability-weighted score is read from the distribution over the six digits at
  that first position, before the judge has committed to anything.
- ``reasoning`` (the paper's): reason step by step first, then print the choice on its own
  line and repeat it on the last line. Its weighted score is read at the *first* bare choice
  line (at the repetition the judge only copies what it wrote, a point mass).

The stance prompt (:func:`stance_prompt`, used by ``palign judge-validate``) asks a judge for
the 1-5 Likert reading of a free text: how accurately the statement describes its writer. The
stance instruction (:func:`stance_instruction`) asks a generator model for a text taking a
given 1-5 stance towards a statement: the known answers the judge must recover.
"""

from __future__ import annotations

from palign.data.types import Inventory, Person, Semantics
from palign.errors import PalignError
from palign.models.prompts import OPTION_TEXTS

QUESTION_VERSION = "q1"
QUESTION_TEMPLATE = 'Tell me in a few sentences how well this describes you: "{statement}"'
"""The open question the aligned model answers (``{statement}``: ``Inventory.statement``)."""

RUBRIC_VERSION = "r1"
"""Version of the reasoning-then-score rubric (the paper's protocol)."""
SCORE_FIRST_VERSION = "s1"
"""Version of the score-first rubric."""
PROTOCOLS = ("score-first", "reasoning")
"""How the judge is asked for its choice (see the module docstring)."""
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

_DATA_TEMPLATE = """You are evaluating a response written by a language model that was aligned \
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

"""

RUBRIC_TEMPLATE = (
    _DATA_TEMPLATE
    + """Does the response meet the criterion? First explain your reasoning step by step; do not \
state the answer at the outset. Then write the choice, only one of 1, 2, 3, 4, 5, 6 (no \
quotes, no punctuation), on a line of its own. Finally repeat just that choice again on a \
new last line."""
)
"""The reasoning-then-score rubric (version :data:`RUBRIC_VERSION`, the paper's protocol)."""

SCORE_FIRST_TEMPLATE = (
    _DATA_TEMPLATE
    + """Rate the response from 1 to 6 by the criterion. Your reply must start with the \
digit, e.g. "1", "2", "3", "4", "5" or "6"."""
)
"""The score-first rubric (version :data:`SCORE_FIRST_VERSION`): the digit comes first."""

SCORE_FIRST_MAX_TOKENS = 16
"""Default judgement length of the score-first protocols (only the first token is read)."""
REASONING_MAX_TOKENS = 512
"""Default judgement length of the reasoning protocol."""

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


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line error."""
    if protocol not in PROTOCOLS:
        raise PalignError(f"unknown judge protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    return protocol


def rubric_version(protocol: str = "score-first") -> str:
    """The version of the rubric prompt of ``protocol``."""
    return SCORE_FIRST_VERSION if check_protocol(protocol) == "score-first" else RUBRIC_VERSION


def default_max_tokens(protocol: str) -> int:
    """The default judgement length of ``protocol``."""
    if check_protocol(protocol) == "score-first":
        return SCORE_FIRST_MAX_TOKENS
    return REASONING_MAX_TOKENS


def rubric_prompt(statement: str, target: str, response: str, protocol: str = "score-first") -> str:
    """The judge prompt rating ``response`` against the person's ``target`` label (1-6).

    ``protocol`` picks the ending: ``score-first`` (the digit first) or ``reasoning`` (the
    paper's: reasoning, then the choice on its own line, repeated on the last line).
    """
    levels = "\n".join(
        f'"{k + 1}": "{name} - {text}"' for k, (name, text) in enumerate(SCORE_LEVELS)
    )
    template = (
        SCORE_FIRST_TEMPLATE if check_protocol(protocol) == "score-first" else RUBRIC_TEMPLATE
    )
    return template.format(
        statement=statement, target=target, response=response.strip(), levels=levels
    )


STANCE_VERSION = "t1"
"""Version of the stance prompt and the stance instruction."""
STANCE_CHOICES = "12345"
STANCE_LEVELS: tuple[str, ...] = (
    "Very Inaccurate: the writer is the opposite of what the statement says",
    "Moderately Inaccurate: the writer is mostly unlike what the statement says",
    "Neither Accurate Nor Inaccurate: the writer is in the middle, neither like it nor unlike it",
    "Moderately Accurate: the writer is mostly like what the statement says",
    "Very Accurate: the statement describes the writer very well",
)
"""The five Likert levels (1 = Very Inaccurate ... 5 = Very Accurate) with a description."""

STANCE_TEMPLATE = """Below are a statement and a short text a person wrote about themselves.

[BEGIN DATA]
***
[Statement]: {statement}
***
[Text]: {text}
***
[Scale]: how accurately does the statement describe the person who wrote the text?
{levels}
***
[END DATA]

"""
STANCE_SCORE_FIRST = """Rate it from 1 to 5 by the scale. Your reply must start with the \
digit, e.g. "1", "2", "3", "4" or "5"."""
STANCE_REASONING = """How accurately does the statement describe the writer? First explain \
your reasoning step by step; do not state the answer at the outset. Then write the choice, \
only one of 1, 2, 3, 4, 5 (no quotes, no punctuation), on a line of its own. Finally repeat \
just that choice again on a new last line."""

INSTRUCTION_TEMPLATE = """Write three or four sentences in the first person about yourself, \
as someone for whom the statement "{statement}" is {level}. Show it through your habits, \
feelings and examples from your life. Do not repeat the statement and do not mention any \
rating or scale. Reply with the text only."""
_INSTRUCTION_LEVELS = (
    "very inaccurate (you are the opposite of it)",
    "moderately inaccurate (you are mostly unlike it)",
    "neither accurate nor inaccurate (you are in the middle, neither like it nor unlike it)",
    "moderately accurate (you are mostly like it)",
    "very accurate (it describes you very well)",
)


def stance_levels() -> str:
    """The scale lines of the stance prompt, one per level 1..5."""
    return "\n".join(f'"{k + 1}": "{t}"' for k, t in enumerate(STANCE_LEVELS))


def stance_prompt(statement: str, text: str, protocol: str = "score-first") -> str:
    """The judge prompt reading the 1-5 stance of ``text`` towards ``statement``."""
    tail = STANCE_SCORE_FIRST if check_protocol(protocol) == "score-first" else STANCE_REASONING
    return (
        STANCE_TEMPLATE.format(statement=statement, text=text.strip(), levels=stance_levels())
        + tail
    )


def stance_instruction(statement: str, level: int) -> str:
    """The generator instruction for a text whose stance towards ``statement`` is ``level``."""
    if not 1 <= int(level) <= 5:
        raise ValueError(f"level must be 1..5, got {level}")
    return INSTRUCTION_TEMPLATE.format(
        statement=statement, level=_INSTRUCTION_LEVELS[int(level) - 1]
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
    return {
        "question": QUESTION_VERSION,
        "rubric": RUBRIC_VERSION,
        "score_first": SCORE_FIRST_VERSION,
        "pairwise": PAIRWISE_VERSION,
        "stance": STANCE_VERSION,
    }
