"""``palign app``'s routes without a browser (the browser walk is tests/test_app_browser.py).

A tiny random Llama with the real SmolLM2 tokenizer; the PAPI release from ../shared.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from palign.data.profile import percentile, population, trait_profile
from palign.models.loading import LoadedModel
from palign.serve.app import ServeConfig
from palign.serve.ui import UIConfig, create_ui_app

pytestmark = pytest.mark.usefixtures("one_thread")

FIT = {"k": 4, "alpha_grid": [0, 2], "folds": 2}


def app_of(lm: LoadedModel, papi_dir: Path, tmp_path: Path, **cfg):  # type: ignore[no-untyped-def]
    config = ServeConfig(served_model_name="tiny", data=papi_dir, threads=1, **cfg)
    return create_ui_app(lm, tmp_path / "appdata", config, UIConfig(fit_options=dict(FIT)))


def data_person(pid: str, papi_dir: Path) -> dict:
    from palign.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["data", "person", pid, "--data", str(papi_dir), "--format", "json"]) == 0
    return json.loads(buf.getvalue())


def test_profile_equals_data_person(tiny_lm: LoadedModel, papi, papi_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The page's scores are ``palign data person``'s, percentiles re-stated over the persons."""
    inv = papi.inventory
    with TestClient(app_of(tiny_lm, papi_dir, tmp_path)) as c:
        for p in papi.persons[:3]:
            answers = p.answers(inv, "agreement", inv.shown_ids)
            prof = c.post("/app/api/profile", json={"answers": answers}).json()
            ref = data_person(p.id, papi_dir)
            assert prof["answered"] == len(answers)
            for row in prof["traits"]:
                assert row["score"] == ref["traits"][row["key"]]["shown"]
            for row in prof["facets"]:
                assert row["score"] == ref["facets"][row["key"]]["shown"]
            # percentile: share of the 300 persons below (ties half), counted here directly
            t = prof["traits"][0]
            scores = [
                trait_profile(inv, q.answers(inv, "agreement", inv.shown_ids), "agreement")[
                    t["key"]
                ]
                for q in papi.persons
            ]
            below = sum(s < t["score"] for s in scores) + 0.5 * sum(s == t["score"] for s in scores)
            assert t["percentile"] == round(100 * below / len(scores), 1)
        # a partial questionnaire: only the answered items count, and the page is told how many
        p = papi.persons[0]
        part = dict(list(p.answers(inv, "agreement", inv.shown_ids).items())[:10])
        prof = c.post("/app/api/profile", json={"answers": part}).json()
        assert prof["answered"] == 10 and prof["items"] == 120
        assert sum(r["answered"] for r in prof["traits"]) == 10
        assert any(r["score"] is None or r["answered"] < r["items"] for r in prof["traits"])


def test_percentile_and_population(papi) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    s = np.array([1.0, 2.0, 2.0, 3.0])
    assert percentile(s, 2.0) == 50.0 and percentile(s, 0.5) == 0.0 and percentile(s, 4) == 100
    pop = population(papi, "agreement", papi.inventory.shown_ids)
    assert set(pop) >= set(papi.inventory.traits) and len(pop["O"]) == len(papi.persons)
    assert (np.diff(pop["N"]) >= 0).all()


def test_app_routes_and_refusals(tiny_lm: LoadedModel, papi, papi_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    inv = papi.inventory
    answers = papi.persons[0].answers(inv, "agreement", inv.shown_ids)
    with TestClient(app_of(tiny_lm, papi_dir, tmp_path)) as c:
        assert c.get("/").url.path == "/app/"
        assert "Questionnaire" in c.get("/app/").text
        assert c.get("/app/nothing.js").status_code == 404
        info = c.get("/app/api/info").json()
        # the statements are the release's shown items, texts from the data
        assert [(i["id"], i["text"]) for i in info["items"]] == [
            (it.id, it.text) for it in inv.shown_items
        ]
        assert [s["value"] for s in info["scale"]] == [1, 2, 3, 4, 5]
        assert info["scale"][-1]["label"] == "Very Accurate"
        assert info["fit"]["options"]["steer_position"] == "all"
        assert Path(info["data_folder"]) == (tmp_path / "appdata" / "adapters").resolve()
        # bad answers
        r = c.post("/app/api/profile", json={"answers": {"999": 3}})
        assert (
            r.status_code == 400 and "not one of the questionnaire" in r.json()["error"]["message"]
        )
        r = c.post("/app/api/profile", json={"answers": {inv.shown_ids[0]: 7}})
        assert r.status_code == 400 and "1..5" in r.json()["error"]["message"]
        r = c.post("/app/api/fit", json={"name": "me", "answers": {inv.shown_ids[0]: 3}})
        assert r.status_code == 400 and "at least 4" in r.json()["error"]["message"]
        r = c.post("/app/api/fit", json={"name": "../x", "answers": answers})
        assert r.status_code == 400 and "not allowed" in r.json()["error"]["message"]
        assert c.get("/app/api/personalities/me/adapter.zip").status_code == 404
        # one fit at a time
        r = c.post("/app/api/fit", json={"name": "me", "answers": answers})
        assert r.status_code == 202 and r.json()["status"] == "running"
        r2 = c.post("/app/api/fit", json={"name": "you", "answers": answers})
        assert r2.status_code == 409 and "already running" in r2.json()["error"]["message"]
        events = []
        with c.stream("GET", "/app/api/fit/events") as s:
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "done", events[-1]
        card = events[-1]["model"]
        assert card["id"] == "tiny:me" and card["palign"]["steer_position"] == "all"
        assert "tiny:me" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        z = c.get("/app/api/personalities/me/adapter.zip")
        assert z.status_code == 200
        names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
        assert sorted(names) == ["me/adapter.safetensors", "me/adapter_config.json"]
        # the fitted adapter records no answers (only which items were answered)
        cfg = json.loads(zipfile.ZipFile(io.BytesIO(z.content)).read("me/adapter_config.json"))
        assert "answers" not in json.dumps(cfg).lower().replace("answers-file", "")
        assert c.delete("/v1/personalities/me").status_code == 200
        assert not (tmp_path / "appdata" / "adapters" / "me").exists()


def test_app_api_key(tiny_lm: LoadedModel, papi_dir: Path, tmp_path: Path) -> None:
    with TestClient(app_of(tiny_lm, papi_dir, tmp_path, api_key="k")) as c:
        assert c.get("/app/").status_code == 200  # the page itself asks for the key
        for path in ("/app/api/info", "/app/api/fit/events"):
            r = c.get(path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        r = c.post("/app/api/profile", json={"answers": {}})
        assert r.status_code == 401
        assert c.get("/app/api/info", headers={"Authorization": "Bearer k"}).status_code == 200


def test_fitted_personalities_survive_a_restart(
    tiny_lm: LoadedModel, papi, papi_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    inv = papi.inventory
    answers = papi.persons[1].answers(inv, "agreement", inv.shown_ids)
    with TestClient(app_of(tiny_lm, papi_dir, tmp_path)) as c:
        assert c.post("/app/api/fit", json={"name": "ann", "answers": answers}).status_code == 202
        t0 = time.monotonic()
        while c.get("/app/api/info").json()["job"]["status"] == "running":
            assert time.monotonic() - t0 < 300
            time.sleep(0.2)
    # a staging folder of a fit cut by a restart is cleaned at the next start
    (tmp_path / "appdata" / "adapters" / ".ann.xyz").mkdir()
    with TestClient(app_of(tiny_lm, papi_dir, tmp_path)) as c:
        assert "tiny:ann" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert not (tmp_path / "appdata" / "adapters" / ".ann.xyz").exists()


def test_app_cli_refuses_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    from palign.cli import main

    assert main(["app", "--port", "70000"]) == 2
    assert "palign: error: --port 70000" in capsys.readouterr().err
