"""Talk to aligned models: generation with one or many PAS adapters on one base model.

>>> from palign.chat import AlignedModel
>>> am = AlignedModel.from_adapter("runs/person-172481")          # loads the base model too
>>> print(am.generate("How do you spend a free evening?"))
>>> am.generate_many(["Hi!", "Hi!"], adapters=[a1, a2])             # two personalities, one batch
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from palign.errors import PalignError
from palign.models.loading import LoadedModel, load_model
from palign.steering.adapter import PASAdapter, load_adapter
from palign.steering.intervene import steer

Message = dict[str, str]


def chat_ids(
    lm: LoadedModel,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> list[int]:
    """Token ids of a conversation (chat template or plain).

    Args:
        lm: the model (its tokenizer's chat template, or ``Role: text`` turns without one).
        messages: the conversation.
        add_generation_prompt: end with the assistant turn's opening (default).
        continue_final_message: leave the last (assistant) message open, to be continued.
    """
    tok = lm.tokenizer
    kw = {
        "add_generation_prompt": add_generation_prompt,
        "continue_final_message": continue_final_message,
    }
    if getattr(tok, "chat_template", None):
        try:
            text = tok.apply_chat_template(list(messages), tokenize=False, **kw)
        except Exception:  # templates without a system role: merge it into the first user turn
            msgs = [dict(m) for m in messages]
            if msgs and msgs[0]["role"] == "system":
                sys_msg = msgs.pop(0)["content"]
                if msgs:
                    msgs[0]["content"] = f"{sys_msg}\n\n{msgs[0]['content']}"
            text = tok.apply_chat_template(msgs, tokenize=False, **kw)
        return list(tok(text, add_special_tokens=False).input_ids)
    parts = [f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages]
    if continue_final_message and parts:
        parts[-1] = parts[-1][:-2]
    elif add_generation_prompt:
        parts.append("Assistant: ")
    return list(tok("".join(parts)).input_ids)


def adapter_position(adapter: PASAdapter) -> str:
    """The steering position an adapter was fitted with (``"last"`` for adapters written
    before palign recorded it, whose alpha was chosen at the last position)."""
    from palign.models.readout import check_position

    extra = adapter.config.get("extra") or {}
    return check_position(str(extra.get("steer_position", "last")))


@dataclass
class AlignedModel:
    """A base model plus a PAS adapter.

    Attributes:
        lm: the base model.
        adapter: the PAS adapter (None = the plain base model).
        alpha: steering strength override (None = the adapter's fitted alpha).
        system_prompt: system turn of conversations (default: the adapter's recorded one).
        position: where the shift is added: ``"all"`` (every prompt position and every new
            token, the paper's o_proj bias) or ``"last"`` (the last position of each forward:
            the prompt's last token and every new token). ``None`` = the adapter's recorded
            position (``"last"`` for adapters written before the position was recorded, as
            their alpha was chosen that way), else ``"all"``.
        steering: raw steering vectors ``(n_layers, hidden)`` used when there is no adapter
            (e.g. the vector of an evaluation run's PAS fit); ``alpha`` does not rescale them.
    """

    lm: LoadedModel
    adapter: PASAdapter | None = None
    alpha: float | None = None
    system_prompt: str | None = None
    history: list[Message] = field(default_factory=list)
    position: str | None = None
    steering: torch.Tensor | None = None

    @property
    def steer_position(self) -> str:
        """The steering position in effect (see :attr:`position`)."""
        from palign.models.readout import check_position

        if self.position is not None:
            return check_position(self.position)
        if self.adapter is not None:
            return adapter_position(self.adapter)
        return "all"

    @classmethod
    def from_adapter(
        cls,
        folder: str | Path,
        model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        force: bool = False,
        position: str | None = None,
    ) -> AlignedModel:
        """Load an adapter and its base model (``model`` overrides the recorded spec;
        ``position`` overrides the adapter's recorded steering position)."""
        import json

        cfg_path = Path(folder) / "adapter_config.json"
        if not cfg_path.is_file():
            raise PalignError(
                f"{folder} is not a palign adapter (no adapter_config.json); "
                "create one with 'palign align'"
            )
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            raise PalignError(f"{cfg_path} is not valid JSON; re-create the adapter") from None
        if "peft_type" in cfg:  # a PEFT LoRA adapter of the training baselines (dpo, grpo)
            from palign.train.lora import LoRAAdapter, load_lora_model

            lm, meta = load_lora_model(folder, model=model, device=device, dtype=dtype)
            lora = LoRAAdapter(meta, Path(folder))
            return cls(lm, lora, system_prompt=meta.get("system_prompt"), position=position)  # type: ignore[arg-type]
        extra = cfg.get("extra") or {}
        spec = model or extra.get("model_spec") or cfg.get("base_model", {}).get("id")
        lm = load_model(spec, device=device, dtype=dtype)
        adapter = load_adapter(folder, lm, force=force)
        return cls(lm, adapter, system_prompt=extra.get("system_prompt"), position=position)

    def u(self, alpha: float | None = None) -> torch.Tensor | None:
        """Steering vectors at ``alpha`` (default: the override, else the fitted alpha)."""
        if self.adapter is None:
            return self.steering
        a = alpha if alpha is not None else self.alpha
        return self.adapter.u_at(a)

    def messages(self, prompt: str) -> list[Message]:
        """The conversation so far plus ``prompt`` as the next user turn."""
        msgs: list[Message] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        return msgs + self.history + [{"role": "user", "content": prompt}]

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 200,
        temperature: float = 0.0,
        seed: int = 0,
        on_text: Callable[[str], None] | None = None,
        remember: bool = False,
    ) -> str:
        """Answer ``prompt`` (greedy when temperature is 0); ``on_text`` streams the text."""
        return self.generate_many(
            [prompt],
            adapters=None,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            on_text=on_text,
            remember=remember,
        )[0]

    def generate_many(
        self,
        prompts: Sequence[str],
        adapters: Sequence[PASAdapter | None] | None = None,
        *,
        max_new_tokens: int = 200,
        temperature: float = 0.0,
        seed: int = 0,
        on_text: Callable[[str], None] | None = None,
        remember: bool = False,
    ) -> list[str]:
        """Generate for several prompts in one batch, each row with its own adapter (or none).

        ``adapters=None`` uses this model's adapter for every row. Streaming (``on_text``)
        is only available for a single prompt.
        """
        from transformers import TextStreamer

        lm = self.lm
        tok = lm.tokenizer
        if adapters is not None and len(adapters) != len(prompts):
            raise PalignError("give one adapter (or None) per prompt")
        seqs = [chat_ids(lm, self.messages(p)) for p in prompts]
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=lm.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=lm.device)
        rows = []
        for k in range(len(prompts)):
            if adapters is None:
                rows.append(self.u())
            else:
                a = adapters[k]
                rows.append(None if a is None else a.u_at(self.alpha))
        u = None
        if any(r is not None for r in rows):
            ref = next(r for r in rows if r is not None)
            u = torch.stack([r if r is not None else torch.zeros_like(ref) for r in rows])
        position = self.steer_position
        if adapters is not None and self.position is None:
            found = {adapter_position(a) for a in adapters if a is not None}
            if len(found) > 1:
                raise PalignError(
                    "these adapters were fitted with different steering positions "
                    f"({', '.join(sorted(found))}); set AlignedModel.position to use one for all"
                )
            position = found.pop() if found else position
        streamer = None
        if on_text is not None:
            if len(prompts) != 1:
                raise PalignError("streaming works for one prompt at a time")

            class _Stream(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    on_text(text)

            streamer = _Stream(tok, skip_prompt=True, skip_special_tokens=True)
        gen_kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad}
        if temperature > 0:
            torch.manual_seed(seed)
            gen_kw.update(do_sample=True, temperature=temperature)
        else:
            gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode(), steer(lm.model, u, position=position):  # type: ignore[arg-type]
            out = lm.model.generate(ids, attention_mask=mask, streamer=streamer, **gen_kw)
        texts = [tok.decode(o[width:], skip_special_tokens=True).strip() for o in out]
        if remember:
            self.history += [
                {"role": "user", "content": prompts[0]},
                {"role": "assistant", "content": texts[0]},
            ]
        return texts
