"""Greedy-text agreement of a ``palign export --to gguf`` file in llama.cpp with palign.

    python benchmarks/gguf_agreement.py                  # SmolLM2, 10 prompts, 48 new tokens
    python benchmarks/gguf_agreement.py --adapter adapters/me --threads 2

Needs llama-cpp-python (``import llama_cpp``). Steps:

1. an adapter: ``--adapter DIR``, else a PAS adapter fitted on random activations (seed 0,
   alpha 4, K 16, recorded at steering position "all" with palign align's default system
   prompt), as ``benchmarks/serve_load.py`` uses;
2. ``palign export --to gguf`` of it (:func:`palign.serve.export_gguf.export_gguf`);
3. for each prompt, the chat as ``palign serve`` builds it for that personality (its system
   prompt first) and greedy text (``--max-tokens`` new tokens or end of sequence) from
   palign's steered model (``steer(position="all")`` + transformers ``generate``: what
   ``palign serve`` answers, tests/test_serve.py) and from the unsteered model;
4. the same prompts in llama.cpp: the exported GGUF, rendered by the GGUF's own chat template
   (so the system prompt comes from the export, not from palign) and tokenized by llama.cpp,
   and the unsteered base GGUF with the same token ids; greedy (top_k 1, temperature 0).

It reports, for (export in llama.cpp vs palign steered) and (base GGUF in llama.cpp vs palign
unsteered): the exact-match rate of the new token ids, the mean common-prefix length in
tokens and the first-token agreement. palign runs the GGUF's weights de-quantised to float32
while llama.cpp multiplies the quantised weights with quantised activations, so the second
pair measures that numeric noise alone; the first adds whatever the export loses. JSON goes to
``--out`` (default ``benchmarks/results/gguf_agreement.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
PROMPTS = (
    "How do you spend a free evening?",
    "What do you do when plans change at the last minute?",
    "Describe yourself in three sentences.",
    "What makes a good friend?",
    "How do you feel about parties with many strangers?",
    "Tell me what annoys you most, honestly.",
    "How do you handle a deadline you might miss?",
    "What would you do with an unexpected day off?",
    "Do you prefer planning a trip or improvising it?",
    "How do you react when someone criticises your work?",
)
SYSTEM_PROMPT = "You are a helpful, honest and concise assistant."  # palign align's default


def make_adapter(lm: Any, folder: Path) -> Path:
    """A PAS adapter fitted on random activations (seed 0, alpha 4, K 16)."""
    from palign.steering import fit_pas, resolve_arch, save_adapter

    arch = resolve_arch(lm.model)
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(60, arch.n_layers, arch.n_heads, arch.head_dim, generator=g)
    ans = np.random.default_rng(0).choice([1, 2, 4, 5], size=30).astype(float)
    res = fit_pas(acts, ans, arch, alpha=4.0, K=16)
    return save_adapter(
        folder, res, model_id=lm.model_id, arch=arch, revision=lm.revision,
        inventory="ipip-neo", semantics="agreement", person="random-0",
        extra={"model_spec": lm.spec, "steer_position": "all", "system_prompt": SYSTEM_PROMPT},
    )  # fmt: skip


def palign_greedy(lm: Any, ids: list[int], u: torch.Tensor | None, n: int) -> list[int]:
    """New token ids of greedy decoding (eos included when reached)."""
    from palign.steering import steer

    x = torch.tensor([ids], device=lm.device)
    kw = {"attention_mask": torch.ones_like(x), "max_new_tokens": n, "do_sample": False,
          "pad_token_id": lm.tokenizer.pad_token_id}  # fmt: skip
    with torch.no_grad():
        if u is None:
            out = lm.model.generate(x, **kw)
        else:
            with steer(lm.model, u, position="all"):
                out = lm.model.generate(x, **kw)
    return out[0, len(ids) :].tolist()


def llama_greedy(llm: Any, ids: list[int], n: int) -> list[int]:
    toks: list[int] = []
    eos = llm.token_eos()
    llm.reset()  # a fresh KV cache per prompt (no prefix reuse across prompts)
    for t in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                          reset=True):  # fmt: skip
        toks.append(int(t))
        if t == eos or len(toks) >= n:
            break
    return toks


def prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, Any]:
    pre = [prefix(x, y) for x, y in zip(a, b)]
    return {
        "exact_match_rate": round(float(np.mean([x == y for x, y in zip(a, b)])), 3),
        "exact_matches": int(sum(x == y for x, y in zip(a, b))),
        "mean_common_prefix_tokens": round(float(np.mean(pre)), 2),
        "common_prefix_tokens": pre,
        "first_token_agreement": round(float(np.mean([p > 0 for p in pre])), 3),
        "mean_new_tokens": round(float(np.mean([len(y) for y in b])), 2),
    }


def render(template: str, messages: list[dict[str, str]], tok: Any) -> str:
    """The GGUF's chat template rendered as llama-cpp-python's Jinja2 formatter does."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)

    def _raise(msg: str) -> None:
        raise ValueError(msg)

    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=tok.bos_token or "",
        eos_token=tok.eos_token or "", raise_exception=_raise,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="a model alias or .gguf (llama arch)")
    ap.add_argument("--adapter", default=None, help="PAS adapter (default: random, alpha 4)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch and llama.cpp CPU threads")
    ap.add_argument("--out", default=str(HERE / "results" / "gguf_agreement.json"))
    args = ap.parse_args()

    import llama_cpp
    from gguf import GGUFReader

    from palign.chat import chat_ids
    from palign.models.loading import load_model
    from palign.serve.export_gguf import base_gguf, export_gguf
    from palign.steering import load_adapter

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu", dtype="float32")
    prompts = PROMPTS[: args.prompts]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else make_adapter(lm, Path(tmp) / "adapter")
        out = Path(tmp) / "person.gguf"
        rec = export_gguf(adapter, out, model=lm)
        pas = load_adapter(adapter, lm)
        u = pas.u_at(None)
        system = rec["system_prompt"]
        template = GGUFReader(str(out)).fields["tokenizer.chat_template"].contents()
        ids, gguf_ids = [], []
        opts = {"n_ctx": 1024, "n_threads": args.threads, "verbose": False, "seed": 0}
        exported = llama_cpp.Llama(model_path=str(out), **opts)
        for p in prompts:
            msgs = [{"role": "user", "content": p}]
            served = [{"role": "system", "content": system}, *msgs] if system else msgs
            ids.append(chat_ids(lm, served))  # what palign serve feeds the model
            text = render(template, msgs, lm.tokenizer)  # the export's own template
            gguf_ids.append(exported.tokenize(text.encode(), add_bos=False, special=True))
        t_pal = time.perf_counter()
        pal_steered = [palign_greedy(lm, x, u, args.max_tokens) for x in ids]
        pal_plain = [palign_greedy(lm, x, None, args.max_tokens) for x in ids]
        t_pal = time.perf_counter() - t_pal
        t_cpp = time.perf_counter()
        cpp_steered = [llama_greedy(exported, x, args.max_tokens) for x in gguf_ids]
        del exported
        base = llama_cpp.Llama(model_path=str(base_gguf(args.model)), **opts)
        cpp_plain = [llama_greedy(base, x, args.max_tokens) for x in ids]
        del base
        t_cpp = time.perf_counter() - t_cpp
    res: dict[str, Any] = {
        "benchmark": "gguf_agreement",
        "command": "python benchmarks/gguf_agreement.py " + " ".join(sys.argv[1:]),
        "model": lm.model_id,
        "revision": lm.revision,
        "base_gguf": rec["base_model"]["gguf"],
        "palign_dtype": "float32 (the GGUF de-quantised)",
        "adapter": args.adapter or "PAS on random activations, seed 0, alpha 4, K 16",
        "person": rec["person"],
        "alpha": rec["alpha"],
        "system_prompt": system,
        "prompts": list(prompts),
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "llama_cpp_python": llama_cpp.__version__,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "template_tokens_equal_palign_serve": [a == b for a, b in zip(gguf_ids, ids)],
        "export_vs_palign_steered": agreement(cpp_steered, pal_steered),
        "base_gguf_vs_palign_unsteered": agreement(cpp_plain, pal_plain),
        "export_vs_palign_unsteered": agreement(cpp_steered, pal_plain),
        "palign_steered_vs_unsteered": agreement(pal_steered, pal_plain),
        "texts": [
            {
                "prompt": p,
                "palign_steered": lm.tokenizer.decode(a, skip_special_tokens=True),
                "llama_cpp_export": lm.tokenizer.decode(b, skip_special_tokens=True),
                "palign_unsteered": lm.tokenizer.decode(c, skip_special_tokens=True),
                "llama_cpp_base": lm.tokenizer.decode(d, skip_special_tokens=True),
            }
            for p, a, b, c, d in zip(prompts, pal_steered, cpp_steered, pal_plain, cpp_plain)
        ],
        "palign_generate_s": round(t_pal, 1),
        "llama_cpp_generate_s": round(t_cpp, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    dst = Path(args.out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for key in ("export_vs_palign_steered", "base_gguf_vs_palign_unsteered",
                "export_vs_palign_unsteered", "palign_steered_vs_unsteered"):  # fmt: skip
        a = res[key]
        print(f"{key:32s} exact {a['exact_matches']}/{len(prompts)}  mean common prefix "
              f"{a['mean_common_prefix_tokens']:5.1f} tok  first token "
              f"{a['first_token_agreement']:.2f}")  # fmt: skip
    print(f"template tokens equal palign serve's: {all(res['template_tokens_equal_palign_serve'])}")
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
