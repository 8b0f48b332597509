"""Throughput of the whole PAS pipeline at 8B scale, next to a faithful re-statement of the
original procedure (the paper's ``main.py``).

    python benchmarks/gpu_throughput.py                    # Llama-3-8B shape, bf16, GPU
    python benchmarks/gpu_throughput.py --shape tiny       # CPU smoke, about a minute

(CI runs these phases through ``benchmarks/gpu_suite.py --smoke``, which imports them.)

The model is a Llama with random weights built from ``benchmarks/configs/<shape>-shape.json``
(nothing is downloaded); token ids come from a local tokenizer (the embedded SmolLM2's, or
``--tokenizer DIR``). Measured with CUDA synchronisation, in one run:

1. capture: the contrastive activations of the 120 shown PAPI items (240 prompts);
2. fit: one person's probes + head selection + directions (no forward);
3. like-for-like grid: P persons x 6 alphas x 180 test items with palign's ``pas+few-shot``
   setup (the person's 120-answer few-shot system prompt, ~1,500 tokens, the shift at ALL
   positions as the original's o_proj bias), logits readout: each (person, alpha) steered
   prefix computed once and shared by that row's items;
4. honest ``pas+few-shot`` and ``pas`` (all positions): palign's methods per person (alpha by
   3-fold CV over the 120 shown items: 6 alphas x 120 items, then the 180 test items);
5. reference: the previous fast variant (``pas``, neutral prompt, last position, KV caches
   shared across persons and alphas), labelled as such;
6. original, faithful re-statement (on a subset, then projected): per person 6 alphas x 180
   test items, greedy generation of 15 new tokens in batches of 10 with the person's
   few-shot system prompt in every prompt, the shift as an ``o_proj`` bias (all positions),
   ``torch.cuda.empty_cache()`` at every decoding step, plus one scikit-learn logistic probe
   per head (heads sampled across all layers for the projection).

Ratios: like for like = original / palign grid (same protocol: pas+few-shot, all positions,
6 alphas x 180 items); honest = original / palign's honest ``pas+few-shot`` protocol. It prints
persons per minute, the projected time for all 300 persons, peak GPU memory and the ratios,
and writes the figures as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ALPHAS = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Timer:
    def __init__(self, dev: torch.device) -> None:
        self.dev = dev

    def __enter__(self) -> Timer:
        sync(self.dev)
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a: object) -> None:
        sync(self.dev)
        self.s = time.perf_counter() - self.t


def build_model(shape: str, dev: torch.device, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg_dict = json.loads((HERE / "configs" / f"{shape}-shape.json").read_text())
    cfg = LlamaConfig(
        **{k: v for k, v in cfg_dict.items() if k not in ("model_type", "architectures")}
    )
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval(), cfg_dict


def load_tokenizer(path: str | None) -> Any:
    if path:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok
    from palign.models.loading import load_model

    return load_model("smollm2").tokenizer


def original_generate(
    model: Any, tok: Any, prompts: list[list[int]], u: torch.Tensor, dev: torch.device, batch: int
) -> list[list[int]]:
    """The original's generation loop: the shift as an o_proj bias (every position), greedy
    15 new tokens in left-padded batches, ``torch.cuda.empty_cache()`` at every step."""
    from palign.models.readout import _cache_kw, _out_cache
    from palign.steering.arch import resolve_arch

    arch = resolve_arch(model)
    ckw = _cache_kw(model)
    added = []
    for layer, mod in enumerate(arch.modules):  # the original sets o_proj.bias = shift
        b = u[layer].to(device=mod.weight.device, dtype=mod.weight.dtype)
        if mod.bias is None:
            mod.bias = torch.nn.Parameter(b.clone(), requires_grad=False)
            added.append(mod)
        else:
            mod.bias.data += b
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    outs: list[list[int]] = []
    try:
        with torch.no_grad():
            for s in range(0, len(prompts), batch):
                chunk = prompts[s : s + batch]
                width = max(len(x) for x in chunk)
                ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=dev)
                mask = torch.tensor(
                    [[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=dev
                )
                pos = (mask.cumsum(1) - 1).clamp(min=0)
                cache, new = None, []
                for _ in range(15):
                    out = model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=pos,
                        use_cache=True,
                        **({ckw: cache} if cache is not None else {}),
                    )
                    cache = _out_cache(out)
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    new.append(nxt)
                    ids = nxt
                    mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                    pos = pos[:, -1:] + 1
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                outs += torch.cat(new, dim=1).tolist()
    finally:
        for layer, mod in enumerate(arch.modules):
            if mod in added:
                mod.bias = None
            else:
                mod.bias.data -= u[layer].to(device=mod.weight.device, dtype=mod.weight.dtype)
    return outs


@dataclass
class Bench:
    """What every phase needs: the random model, the data, the captured activations."""

    lm: Any
    tok: Any
    ds: Any
    items: list[str]
    statements: list[str]
    arch: Any
    dev: torch.device
    batch_size: int
    cfg: dict[str, Any]
    build_s: float
    capture_s: float
    acts: torch.Tensor  # (2 * n_shown, L, H, d) on the CPU
    acts_dev: torch.Tensor  # the same on the device

    @property
    def gpu(self) -> bool:
        return self.dev.type == "cuda"

    @property
    def inv(self) -> Any:
        return self.ds.inventory

    def shown(self, p: Any) -> np.ndarray:
        """A person's shown answers (0 where missing)."""
        return np.nan_to_num(p.answer_vector(self.inv, self.inv.shown_ids, "agreement"))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gb(dev: torch.device) -> float | None:
    """Peak GPU memory allocated since the last :func:`reset_peak` (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated(dev) / 1e9, 2) if dev.type == "cuda" else None


def setup_bench(
    shape: str,
    dev: torch.device,
    tokenizer: str | None = None,
    data: str | None = None,
    max_items: int | None = None,
    batch_size: int = 32,
) -> Bench:
    """Build the random model on ``dev``, load PAPI and capture the shown items' activations
    (timed; a fresh activation cache so that the capture is measured, not read back)."""
    from palign.data import load_dataset
    from palign.eval.runs import test_items
    from palign.methods.pas import shown_activations
    from palign.models.loading import LoadedModel
    from palign.steering.arch import resolve_arch

    gpu = dev.type == "cuda"
    if not gpu and shape == "tiny":
        torch.set_num_threads(1)  # tiny tensors: one thread is faster on a small machine
    dtype = torch.bfloat16 if gpu else torch.float32
    tok = load_tokenizer(tokenizer)
    os.environ["PALIGN_CACHE"] = tempfile.mkdtemp(prefix="palign-bench-")
    with Timer(dev) as t_build:
        model, cfg = build_model(shape, dev, dtype)
    lm = LoadedModel(model, tok, f"random-{shape}", f"random-{shape}", None, dev, dtype)
    with torch.no_grad():  # warm-up (CUDA context, kernels) outside every timed phase
        model(input_ids=torch.ones((4, 64), dtype=torch.long, device=dev))
    ds = load_dataset(data, "ipip-neo")
    items = test_items(ds.inventory, max_items)
    arch = resolve_arch(model)
    with Timer(dev) as t:
        acts = shown_activations(lm, ds, arch, batch_size=batch_size, progress=False)
    inv = ds.inventory
    return Bench(
        lm=lm,
        tok=tok,
        ds=ds,
        items=items,
        statements=[inv.statement(inv.item(i)) for i in items],
        arch=arch,
        dev=dev,
        batch_size=batch_size,
        cfg=cfg,
        build_s=t_build.s,
        capture_s=t.s,
        acts=acts,
        acts_dev=acts.to(dev),
    )


def fit_seconds(b: Bench, persons: list[Any]) -> float:
    """Median seconds of one person's fit (probes + head selection + directions)."""
    from palign.steering.pas import fit_person

    fit_person(b.acts_dev, b.shown(persons[0]), K=24, seed=0)  # warm-up
    times = []
    for p in persons:
        with Timer(b.dev) as t:
            fit_person(b.acts_dev, b.shown(p), K=24, seed=0)
        times.append(t.s)
    return float(np.median(times))


def grid_seconds(
    b: Bench,
    persons: list[Any],
    position: str,
    few_shot: bool,
    store: Any,
    person_batch: int = 8,
    alphas: tuple[float, ...] = ALPHAS,
    deadline: float | None = None,
) -> tuple[float, int]:
    """Persons x alphas x test items (the original's grid, logits readout), many persons per
    readout call. Stops after the group that passes ``deadline`` (``time.perf_counter``).

    Returns the seconds and the number of persons measured.
    """
    from palign.methods.few_shot import few_shot_prompt
    from palign.models.prompts import NEUTRAL_SYSTEM_PROMPT
    from palign.models.readout import ReadRequest, option_probs
    from palign.steering.pas import fit_person, layer_vectors_grid

    done = 0
    with Timer(b.dev) as tg:
        for s in range(0, len(persons), person_batch):
            chunk = persons[s : s + person_batch]
            rows, reqs = [], []
            for p in chunk:
                fit = fit_person(b.acts_dev, b.shown(p), K=24, seed=0)
                u = layer_vectors_grid(fit, alphas, b.arch)
                sys_prompt = (
                    few_shot_prompt(b.inv, p, "agreement") if few_shot else NEUTRAL_SYSTEM_PROMPT
                )
                for a in range(len(alphas)):
                    row = len(rows)
                    rows.append(u[a])
                    reqs += [ReadRequest(sys_prompt, st, row) for st in b.statements]
            option_probs(
                b.lm,
                reqs,
                batch_size=b.batch_size,
                steering=torch.stack(rows).float(),
                kv_store=store,
                position=position,
            )
            done += len(chunk)
            if deadline is not None and time.perf_counter() > deadline:
                break
    return tg.s, done


def honest_seconds(
    b: Bench,
    cls: type,
    persons: list[Any],
    person_batch: int = 8,
    options: dict[str, Any] | None = None,
    deadline: float | None = None,
) -> tuple[float, int, list[float]]:
    """palign's method ``cls`` (``PAS`` / ``PASFewShot``) per person, all positions: alpha by
    k-fold CV over the shown items, then the test items (logits readout), as ``palign eval``.

    Returns the seconds, the persons measured and the alphas chosen.
    """
    from palign.eval.runs import predict_aligned
    from palign.methods import MethodConfig

    opts = {"batch_size": b.batch_size, "steer_position": "all", **(options or {})}
    method = cls(MethodConfig("agreement", 0, opts))
    method.arch, method.acts = b.arch, b.acts_dev
    alphas: list[float] = []
    done = 0
    with Timer(b.dev) as t:
        for s in range(0, len(persons), person_batch):
            chunk = persons[s : s + person_batch]
            aligned = method.fit_many(b.lm, b.ds, chunk)
            alphas += [a.info["alpha"] for a in aligned]
            predict_aligned(
                b.lm, b.ds, aligned, b.items, "logits", b.batch_size, kv_store=method.kv_store
            )
            done += len(chunk)
            if deadline is not None and time.perf_counter() > deadline:
                break
    return t.s, done, alphas


def sklearn_probe_seconds(b: Bench, person: Any, n_heads: int) -> tuple[float, int]:
    """The original's probes: one scikit-learn logistic regression per head (60/40 split),
    timed on ``n_heads`` heads spread over all layers and projected to every head.

    Returns the projected seconds per person and the heads timed.
    """
    from sklearn.linear_model import LogisticRegression

    from palign.steering.pas import labels_for

    X = b.acts.float().cpu().numpy()
    y = labels_for(torch.tensor(b.shown(person))).numpy()
    keep = y >= 0
    Xk, yk = X[keep], y[keep]
    idx = np.random.default_rng(0).permutation(len(yk))
    tr, va = idx[: int(0.6 * len(yk))], idx[int(0.6 * len(yk)) :]
    L, Hh = X.shape[1], X.shape[2]
    heads = [(layer, h) for layer in range(L) for h in range(Hh)]
    n_sk = min(n_heads, len(heads))
    sampled = [heads[int(i)] for i in np.linspace(0, len(heads) - 1, n_sk).round()]
    t0 = time.perf_counter()
    for layer, h in sampled:  # spread over all layers (probe cost varies with depth)
        clf = LogisticRegression(random_state=0, max_iter=1000).fit(Xk[tr, layer, h], yk[tr])
        clf.score(Xk[va, layer, h], yk[va])
    return (time.perf_counter() - t0) / n_sk * len(heads), n_sk


def original_seconds_per_item(
    b: Bench, person: Any, n_items: int, gen_batch: int = 10
) -> tuple[float, int]:
    """The original's generation (:func:`original_generate`, alpha 4, the person's few-shot
    prompt) on the first ``n_items`` test items after a one-batch warm-up.

    Returns the seconds per generated item and the items timed.
    """
    from palign.methods.few_shot import few_shot_prompt
    from palign.models.prompts import build_generate_prompt, encode_prompt
    from palign.steering.pas import fit_person, layer_vectors_grid

    fit = fit_person(b.acts_dev, b.shown(person), K=24, seed=0)
    u = layer_vectors_grid(fit, (4.0,), b.arch)[0]
    sys_prompt = few_shot_prompt(b.inv, person, "agreement")
    prompts = [
        encode_prompt(b.tok, build_generate_prompt(b.tok, sys_prompt, st))
        for st in b.statements[:n_items]
    ]
    model = b.lm.model
    original_generate(model, b.tok, prompts[:gen_batch], u, b.dev, gen_batch)  # warm-up
    with Timer(b.dev) as t:
        original_generate(model, b.tok, prompts, u, b.dev, gen_batch)
    return t.s / len(prompts), len(prompts)


def palign_generate_seconds_per_readout(
    b: Bench, person: Any, n_items: int, batch_size: int | None = None
) -> tuple[float, int]:
    """palign's ``--readout generate`` (:func:`palign.models.readout.generate_answers`: 15
    greedy tokens, the person's few-shot prompt, steering at all positions) on ``n_items``
    readouts spread over the 6 alphas, after a one-batch warm-up.

    Returns the seconds per readout and the readouts timed.
    """
    from palign.methods.few_shot import few_shot_prompt
    from palign.models.readout import ReadRequest, generate_answers
    from palign.steering.pas import fit_person, layer_vectors_grid

    bs = batch_size or b.batch_size
    fit = fit_person(b.acts_dev, b.shown(person), K=24, seed=0)
    u = layer_vectors_grid(fit, ALPHAS, b.arch).float()
    sys_prompt = few_shot_prompt(b.inv, person, "agreement")
    reqs = [
        ReadRequest(sys_prompt, b.statements[i % len(b.statements)], i % len(ALPHAS))
        for i in range(n_items)
    ]
    generate_answers(b.lm, reqs[:bs], batch_size=bs, steering=u, position="all")  # warm-up
    with Timer(b.dev) as t:
        generate_answers(b.lm, reqs, batch_size=bs, steering=u, position="all")
    return t.s / len(reqs), len(reqs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="llama3-8b", help="llama3-8b (default) or tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--persons", type=int, default=None, help="P (default 32 on GPU, 2 on CPU)")
    ap.add_argument("--honest-persons", type=int, default=None, help="default 16 on GPU, 1 on CPU")
    ap.add_argument("--person-batch", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-items", type=int, default=None, help="test items (default all 180)")
    ap.add_argument("--gen-items", type=int, default=20, help="items of the original's subset")
    ap.add_argument(
        "--gen-batch", type=int, default=10, help="generation batch of the original (10)"
    )
    ap.add_argument("--sklearn-heads", type=int, default=128, help="heads timed with scikit-learn")
    ap.add_argument("--data", default=None)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--out", default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)

    from palign.methods.few_shot import few_shot_prompt
    from palign.methods.pas import PAS, PASFewShot
    from palign.models.readout import KVStore

    dev = pick_device(args.device)
    gpu = dev.type == "cuda"
    P = args.persons or (32 if gpu else 2)
    H = args.honest_persons or (16 if gpu else 1)
    t_all = time.perf_counter()
    reset_peak(dev)
    b = setup_bench(args.shape, dev, args.tokenizer, args.data, args.max_items, args.batch_size)
    cfg, items, tok = b.cfg, b.items, b.tok
    res: dict[str, Any] = {
        "benchmark": "gpu_throughput",
        "command": "python benchmarks/gpu_throughput.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": args.shape,
        "config": {
            k: cfg[k]
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
            )
        },
        "device": torch.cuda.get_device_name(dev) if gpu else platform.processor() or "cpu",
        "dtype": str(b.lm.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "persons_grid": P,
        "persons_honest": H,
        "test_items": len(items),
        "build_s": round(b.build_s, 2),
        "capture_s": round(b.capture_s, 3),
        "capture_samples": int(b.acts.shape[0]),
    }
    persons = b.ds.persons[: max(P, H)]
    # 2. per-person fit (probes + selection + directions), no forward
    res["fit_s_median"] = round(fit_seconds(b, persons[:5]), 4)

    def projected(seconds: float, n: int) -> float:
        return round(res["capture_s"] + seconds / n * 300, 1)

    # 3. like-for-like grid: pas+few-shot, all positions, 6 alphas x items
    g, _ = grid_seconds(b, persons[:P], "all", True, None, args.person_batch)
    res["grid_fewshot_all_s"] = round(g, 3)
    res["grid_readouts"] = P * len(ALPHAS) * len(items)
    res["grid_fewshot_all_persons_per_min"] = round(P / g * 60, 1)
    res["grid_fewshot_all_projected_300_s"] = projected(g, P)
    res["fewshot_prompt_tokens"] = len(
        tok(few_shot_prompt(b.inv, persons[0], "agreement")).input_ids
    )

    # 4. honest protocols, all positions: pas+few-shot (the paper's setup) and pas
    for name, cls in (("honest_fewshot_all", PASFewShot), ("honest_pas_all", PAS)):
        s_h, _, alphas_chosen = honest_seconds(b, cls, persons[:H], args.person_batch)
        res[f"{name}_s"] = round(s_h, 3)
        res[f"{name}_persons_per_min"] = round(H / s_h * 60, 1)
        res[f"{name}_projected_300_s"] = projected(s_h, H)
        res[f"{name}_alphas"] = alphas_chosen

    # 5. reference: the fast variant (pas, neutral prompt, last position, shared caches)
    g, _ = grid_seconds(
        b, persons[:P], "last", False, KVStore(max_bytes=24 << 30), args.person_batch
    )
    res["grid_pas_last_s"] = round(g, 3)
    res["grid_pas_last_projected_300_s"] = projected(g, P)

    # 6. the original procedure, faithfully re-stated, on a subset, projected
    sk_s, n_sk = sklearn_probe_seconds(b, persons[0], args.sklearn_heads)
    res["original_sklearn_probes_s"] = round(sk_s, 2)
    res["original_sklearn_heads_timed"] = n_sk
    per_readout, n_gen = original_seconds_per_item(b, persons[0], args.gen_items, args.gen_batch)
    orig_person = per_readout * len(ALPHAS) * len(items) + sk_s
    res["original_generate_s_per_item"] = round(per_readout, 4)
    res["original_items_timed"] = n_gen
    res["original_gen_batch"] = args.gen_batch
    res["original_s_per_person"] = round(orig_person, 2)
    res["original_projected_300_s"] = round(res["capture_s"] + orig_person * 300, 1)
    res["speedup_like_for_like"] = round(
        res["original_projected_300_s"] / res["grid_fewshot_all_projected_300_s"], 1
    )
    res["speedup_honest_fewshot"] = round(
        res["original_projected_300_s"] / res["honest_fewshot_all_projected_300_s"], 1
    )
    res["peak_gpu_memory_gb"] = peak_gb(dev)
    res["total_s"] = round(time.perf_counter() - t_all, 1)

    m = 60.0
    lines = [
        f"device {res['device']} ({res['dtype']}), shape {args.shape}, torch {torch.__version__}",
        f"capture of {res['capture_samples']} contrastive samples: {res['capture_s']:.2f} s",
        f"per-person fit (probes + heads + directions): {res['fit_s_median'] * 1000:.1f} ms",
        f"like-for-like grid (pas+few-shot, all positions, P={P} x 6 alphas x {len(items)} items,"
        f" ~{res['fewshot_prompt_tokens']}-token prompts): {res['grid_fewshot_all_s']:.2f} s"
        f" -> 300 persons in {res['grid_fewshot_all_projected_300_s'] / m:.1f} min",
        f"honest pas+few-shot (all positions, H={H}): {res['honest_fewshot_all_s']:.2f} s"
        f" -> 300 persons in {res['honest_fewshot_all_projected_300_s'] / m:.1f} min",
        f"honest pas (neutral prompt, all positions, H={H}): {res['honest_pas_all_s']:.2f} s"
        f" -> 300 persons in {res['honest_pas_all_projected_300_s'] / m:.1f} min",
        f"reference grid (pas, last position, shared caches): {res['grid_pas_last_s']:.2f} s"
        f" -> 300 persons in {res['grid_pas_last_projected_300_s'] / m:.1f} min",
        f"original re-statement: {res['original_generate_s_per_item'] * 1000:.1f} ms per 15-token"
        f" item (batches of {args.gen_batch}, few-shot prompt, o_proj bias, empty_cache per step),"
        f" sklearn probes {sk_s:.1f} s -> {res['original_s_per_person']:.0f} s per person"
        f" -> 300 persons in {res['original_projected_300_s'] / 3600:.1f} h",
        f"speed ratio (same device, same run): like for like {res['speedup_like_for_like']}x, "
        f"honest pas+few-shot {res['speedup_honest_fewshot']}x",
        f"peak GPU memory: {res['peak_gpu_memory_gb']} GB; total {res['total_s']} s",
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
