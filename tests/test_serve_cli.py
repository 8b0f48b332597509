"""``palign serve`` as a real process, and the mixed-batch test on the embedded SmolLM2.

The process test starts the command line on a saved tiny model with two adapters, talks to
it with the official ``openai`` client and stops it. The SmolLM2 test (slow) checks that each
row of a mixed batch (different personalities, greedy) equals the same request served alone
and transformers' own ``generate`` under the same steering.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

from palign.chat import chat_ids
from palign.models.loading import LoadedModel, load_model
from palign.serve import create_app
from palign.serve.app import ServeConfig
from palign.serve.testing import serve_in_thread
from palign.steering import fit_pas, load_adapter, resolve_arch, save_adapter, steer


def make_adapter(lm: LoadedModel, folder: Path, seed: int, alpha: float) -> Path:
    arch = resolve_arch(lm.model)
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(60, arch.n_layers, arch.n_heads, arch.head_dim, generator=g)
    answers = np.random.default_rng(seed).choice([1, 2, 4, 5], size=30).astype(float)
    res = fit_pas(acts, answers, arch, alpha=alpha, K=8)
    return save_adapter(
        folder,
        res,
        model_id=lm.model_id,
        arch=arch,
        revision=lm.revision,
        inventory="ipip-neo",
        semantics="agreement",
        person=folder.name,
        extra={"steer_position": "all"},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_process(tiny_folder: Path, tmp_path: Path) -> None:
    lm = load_model(str(tiny_folder))
    for name, seed in (("ann", 1), ("ben", 2)):
        make_adapter(lm, tmp_path / "adapters" / name, seed, 1.5)
    port = _free_port()
    cmd = [
        sys.executable, "-c", "import sys; from palign.cli import main; sys.exit(main())",
        "serve", "--model", str(tiny_folder), "--adapters", str(tmp_path / "adapters"),
        "--port", str(port), "--served-model-name", "tiny", "--log-level", "warning",
        "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() - t0 < 90, "palign serve did not start"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == ["tiny", "tiny:ann", "tiny:ben"]
        r = c.chat.completions.create(
            model="tiny:ben", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
            temperature=0,
        )  # fmt: skip
        assert r.usage.completion_tokens == 5 and r.choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "models: tiny, tiny:ann, tiny:ben" in err


def test_cli_serve_bad_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from palign.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_mixed_batch_equals_solo(tmp_path: Path, one_thread: None) -> None:
    lm = load_model("smollm2")
    for name, seed, alpha in (("ann", 1, 4.0), ("ben", 2, 8.0)):
        make_adapter(lm, tmp_path / name, seed, alpha)
    app = create_app(lm, [tmp_path], ServeConfig(served_model_name="smollm2", threads=1))
    prompts = ["How do you spend a free evening?", "Hi!"]
    reqs = [(m, p) for m in ("smollm2", "smollm2:ann", "smollm2:ben") for p in prompts]
    n_tok = 8
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)

        def ask(model: str, text: str) -> str:
            r = c.chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=n_tok,
                temperature=0,
            )  # fmt: skip
            return r.choices[0].message.content

        solo = [ask(*r) for r in reqs]
        eng = app.state.palign.engine
        out: dict[int, str] = {}
        with eng.model_lock:
            ts = [threading.Thread(target=lambda k=k: out.__setitem__(k, ask(*reqs[k])))
                  for k in range(len(reqs))]  # fmt: skip
            for t in ts:
                t.start()
            t0 = time.monotonic()
            while eng.load["waiting"] < len(reqs) - 1 and time.monotonic() - t0 < 30:
                time.sleep(0.01)
        for t in ts:
            t.join(120)
        assert [out[k] for k in range(len(reqs))] == solo
        assert eng.stats["max_rows"] >= len(reqs) - 1
    # solo answers equal transformers' generate under the same steering (position "all")
    for (model, text), got in zip(reqs, solo):
        ids = chat_ids(lm, [{"role": "user", "content": text}])
        name = model.partition(":")[2]
        u = load_adapter(tmp_path / name, lm).u_at(None) if name else None
        x = torch.tensor([ids])
        with torch.no_grad(), steer(lm.model, u, position="all"):
            ref = lm.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n_tok, do_sample=False
            )
        assert got == lm.tokenizer.decode(ref[0, len(ids) :], skip_special_tokens=True)
    assert len(set(solo)) > len(prompts)  # the personalities change the answers
