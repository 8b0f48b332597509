"""The questionnaire task prompt, formatted with the tokenizer's own chat template.

The task text is the one of the original PAlign code (``main.py``, ``TEMPLATE``, repository
zhu-minjun/PAlign); the statement is passed whole (``"You worry about things."``), as produced
by :meth:`palign.data.types.Inventory.statement`.

Prompt layout (one chat)::

    [system turn: system_prompt]          (omitted when system_prompt is None)
    [user turn:   TASK_TEMPLATE(statement)]
    [assistant turn start]                (add_generation_prompt=True)
    "Option ("                            (ANSWER_PREFILL: the next token is the letter)

The paper prefilled the assistant turn with ``"Option"`` for its generate readout; we keep that
for :func:`build_generate_prompt` and extend it to ``"Option ("`` for the logits readout, so
that the next token is the option letter ``A``..``E``. For PAS contrastive prompts the letter
itself is appended (:func:`build_prompt` with ``answer_letter``), so the last token is the
letter token.

No per-family string handling: everything goes through ``tokenizer.apply_chat_template``.
Only templates that reject a system role (they raise on it, as Gemma 1/2, while the same
exchange without it renders) or silently drop it (the system text is missing from the render)
get the system prompt merged into the user turn, with a warning once per template that names
the reason; any other template failure is an error. Tokenizers without a chat template get a
plain ``System: / User: / Assistant:`` layout.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from palign.errors import PalignError

OPTION_LETTERS = "ABCDE"
"""Option letters in display order; ``answer = 5 - OPTION_LETTERS.index(letter)``."""

OPTION_TEXTS: tuple[str, ...] = (
    "Very Accurate",
    "Moderately Accurate",
    "Neither Accurate Nor Inaccurate",
    "Moderately Inaccurate",
    "Very Inaccurate",
)
"""Option texts for A..E."""

TASK_TEMPLATE = (
    'Given a statement of you: "{statement}"\n'
    "Please choose from the following options to identify how accurately this statement "
    "describes you.\n"
    "Options:\n"
    "(A). Very Accurate\n"
    "(B). Moderately Accurate\n"
    "(C). Neither Accurate Nor Inaccurate\n"
    "(D). Moderately Inaccurate\n"
    "(E). Very Inaccurate"
)
"""The paper's task text (PAlign ``main.py`` ``TEMPLATE``), statement passed whole.

The original ends with a newline that both of its prompt paths stripped (Llama-2 ``.strip()``,
Llama-3's template trims), so we omit it.
"""

GENERATE_PREFILL = "Option"
"""Assistant-turn prefill of the generate readout (as in the paper's ``generateAnswer``)."""

ANSWER_PREFILL = "Option ("
"""Assistant-turn prefill of the logits readout: the next token is the option letter."""

NEUTRAL_SYSTEM_PROMPT = "You are a helpful, honest and concise assistant."
"""The paper's default system prompt (``SYSTEM_PROMPT`` in PAlign ``main.py``)."""

_PLAIN_SYSTEM = "System: {system}\n\n"
_PLAIN_USER = "User: {user}\n\nAssistant: "


def task_text(statement: str) -> str:
    """The user-turn text for one statement (e.g. ``"You worry about things."``)."""
    statement = statement.strip()
    if not statement:
        raise PalignError("empty statement; pass the item's full statement text")
    return TASK_TEMPLATE.format(statement=statement)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(tokenizer: Any, system_prompt: str | None, user_text: str) -> str:
    """Format one system + user exchange up to the start of the assistant turn.

    Uses ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``. The system
    prompt is merged into the user turn (separated by a blank line) only when the template
    rejects the system role: rendering with it raises while the same exchange without it
    renders, or the rendered text does not contain the system prompt (dropped silently).
    Each such template warns once (:class:`SystemRoleMergeWarning`) with the reason. Any
    other template failure raises :class:`PalignError`. Without a chat template:
    ``"System: ...\\n\\nUser: ...\\n\\nAssistant: "``.
    """
    if not has_chat_template(tokenizer):
        head = _PLAIN_SYSTEM.format(system=system_prompt) if system_prompt is not None else ""
        return head + _PLAIN_USER.format(user=user_text)
    user_turn = {"role": "user", "content": user_text}
    if system_prompt is None:
        return _apply(tokenizer, [user_turn])
    messages = [{"role": "system", "content": system_prompt}, user_turn]
    text, failure = _try_apply(tokenizer, messages)
    if text is not None:
        if not system_prompt.strip() or system_prompt.strip() in text:
            return text
        reason = "the chat template renders a system turn without its text (drops it)"
    else:
        # probe render: the same exchange without the system turn; if that fails too, the
        # template is broken for another reason and the error is the user's to see
        _apply(tokenizer, [user_turn])
        reason = f"the chat template rejects the system role ({failure})"
    _warn_merge_once(tokenizer, reason)
    merged = {"role": "user", "content": f"{system_prompt}\n\n{user_text}"}
    return _apply(tokenizer, [merged])


class SystemRoleMergeWarning(UserWarning):
    """The system prompt was merged into the user turn (the template rejects a system role)."""


_MERGE_WARNED: set[str] = set()


def _warn_merge_once(tokenizer: Any, reason: str) -> None:
    """Warn once per chat template that system prompts are merged into the user turn."""
    key = hashlib.sha256(str(tokenizer.chat_template).encode("utf-8")).hexdigest()
    if key in _MERGE_WARNED:
        return
    _MERGE_WARNED.add(key)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    warnings.warn(
        f"{reason} for {name}: the system prompt is put at the start of the user turn "
        "(separated by a blank line) for every prompt of this template",
        SystemRoleMergeWarning,
        stacklevel=3,
    )


def _try_apply(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str | None, str]:
    """``(text, "")`` or ``(None, first line of the template's error)``."""
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return None, msg
    if not isinstance(text, str):  # defensive: some versions may return a list for batches
        raise PalignError("the tokenizer's chat template did not return text; check the model")
    return text, ""


def _apply(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    text, failure = _try_apply(tokenizer, messages)
    if text is None:
        raise PalignError(
            f"the tokenizer's chat template failed ({failure}); "
            "fix or remove tokenizer.chat_template"
        )
    return text


def _check_letter(answer_letter: str | None) -> str:
    if answer_letter is None:
        return ""
    if answer_letter not in OPTION_LETTERS or len(answer_letter) != 1:
        raise PalignError(
            f"invalid answer letter {answer_letter!r}; use one of {', '.join(OPTION_LETTERS)}"
        )
    return answer_letter


def build_prompt(
    tokenizer: Any,
    system_prompt: str | None,
    statement: str,
    answer_letter: str | None = None,
) -> str:
    """The full prompt of the logits readout, ending with :data:`ANSWER_PREFILL`.

    Args:
        tokenizer: the model's tokenizer (its chat template is used).
        system_prompt: system turn text; ``None`` = no system turn (the template's default).
        statement: the full statement, e.g. ``"You worry about things."``.
        answer_letter: ``None`` -> the prompt ends with ``"Option ("`` and the next token is the
            letter; ``"A"``..``"E"`` -> that letter is appended, so the last token is the
            letter token (PAS contrastive prompts).
    """
    letter = _check_letter(answer_letter)
    return chat_text(tokenizer, system_prompt, task_text(statement)) + ANSWER_PREFILL + letter


def build_generate_prompt(tokenizer: Any, system_prompt: str | None, statement: str) -> str:
    """The prompt of the generate readout, ending with :data:`GENERATE_PREFILL` (``"Option"``)."""
    return chat_text(tokenizer, system_prompt, task_text(statement)) + GENERATE_PREFILL


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a formatted prompt.

    Chat-template output already holds its special tokens (BOS etc.), so it is encoded without
    adding special tokens; the plain fallback adds them (e.g. BOS). A doubled leading BOS is
    collapsed.
    """
    ids = list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer)).input_ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token id sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n


@dataclass
class PromptSplit:
    """Prompts of several statements under one system prompt, split into shared + own parts.

    Attributes:
        prefix_ids: token ids shared by all prompts (computed on token ids, not strings).
        suffix_ids: per prompt, the remaining ids; each has at least one token, so that the
            last token (the readout position) is always in the suffix.
        prefix_text: ``prefix_ids`` decoded (for display).
        suffix_texts: ``suffix_ids`` decoded (for display).
    """

    prefix_ids: list[int]
    suffix_ids: list[list[int]]
    prefix_text: str
    suffix_texts: list[str]


def split_prompts(tokenizer: Any, prompts: Sequence[str]) -> PromptSplit:
    """Tokenize full prompts and split them at their longest common token prefix.

    Each full prompt is tokenized on its own and the common prefix is taken on the token id
    lists, so prefix + suffix is exactly the tokenization of the full prompt (no boundary
    effects). The prefix is shortened so that every suffix keeps at least one token.
    """
    full = [encode_prompt(tokenizer, p) for p in prompts]
    if not full:
        return PromptSplit([], [], "", [])
    if min(len(f) for f in full) == 0:
        raise PalignError("a prompt encoded to no tokens; check the tokenizer")
    n = min(common_prefix_len(full), min(len(f) for f in full) - 1)
    prefix = full[0][:n]
    suffixes = [f[n:] for f in full]
    return PromptSplit(
        prefix_ids=prefix,
        suffix_ids=suffixes,
        prefix_text=tokenizer.decode(prefix),
        suffix_texts=[tokenizer.decode(s) for s in suffixes],
    )


def shared_prefix(
    tokenizer: Any,
    system_prompt: str | None,
    statements: Sequence[str],
    answer_letter: str | None = None,
) -> PromptSplit:
    """Split the logits-readout prompts of ``statements`` (one system prompt) at their shared
    token prefix; see :func:`split_prompts`."""
    return split_prompts(
        tokenizer, [build_prompt(tokenizer, system_prompt, s, answer_letter) for s in statements]
    )
