"""``palign app`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium; nothing is downloaded at test time).

The test starts the app itself on a free loopback port (a tiny random Llama with the real
SmolLM2 tokenizer, so the fit takes seconds) and walks the page as a person would: answers the
questionnaire with keys and clicks, reloads half-way, reads the profile, aligns, chats in both
columns, downloads the adapter. The numbers are checked against independent paths: the
profile against ``palign data person``, the adapter against ``palign align --answers``, the
aligned chat against ``palign generate --adapter`` on the downloaded zip.

Set ``PALIGN_APP_SCREENSHOTS=DIR`` (and ``PALIGN_APP_MODEL=smollm2`` for the real model) to
save the screenshots of docs/app.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import torch

from palign.models.loading import LoadedModel
from palign.serve.app import ServeConfig
from palign.serve.testing import serve_in_thread
from palign.serve.ui import UIConfig, create_ui_app
from palign.steering import load_adapter

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PERSON = "172481"  # a PAPI person who answered all 120 shown statements
FIT = {"k": 4, "alpha_grid": [0, 2], "folds": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def _need_browser() -> None:
    # CI sets PALIGN_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip
    required = os.environ.get("PALIGN_REQUIRE_BROWSER") == "1"
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        why = "no chromium/chromedriver (apt-get install chromium chromium-driver)"
        pytest.fail(why) if required else pytest.skip(why)
    if required:
        import selenium  # noqa: F401
    pytest.importorskip("selenium", reason="selenium missing (pip install -e '.[dev]')")


@pytest.fixture
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    _need_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never goes online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(a)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    drv.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield drv
    finally:
        drv.quit()


def _model(tiny_lm: LoadedModel) -> LoadedModel | str:
    return os.environ.get("PALIGN_APP_MODEL") or tiny_lm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(drv, cond, timeout: float = 120, what: str = "condition"):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            v = cond(drv)
        except Exception:  # noqa: BLE001 - the page is still changing
            v = None
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; message: {msg(drv)!r}")


def open_profile(drv) -> None:  # type: ignore[no-untyped-def]
    """Open the profile tab and wait until its chart is drawn.

    The chart is filled after a fetch and sits above the align/download/delete buttons: a
    click sent before it is drawn can land where a button *was* (CI once clicked beside
    "Delete" this way and waited for a message that never came).
    """
    drv.execute_script("window.__palignProfile = null")
    drv.find_element("id", "tab-profile").click()
    wait(drv, lambda d: d.execute_script("return window.__palignProfile"), what="profile drawn")


def msg(drv) -> str:  # type: ignore[no-untyped-def]
    return drv.execute_script(
        "const m=document.getElementById('msg');return m.hidden?'':m.textContent"
    )


def text(drv, id_: str) -> str:  # type: ignore[no-untyped-def]
    return drv.find_element("id", id_).text


def shot(drv, name: str) -> None:  # type: ignore[no-untyped-def]
    out = os.environ.get("PALIGN_APP_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        drv.save_screenshot(str(Path(out) / f"app-{name}.png"))


def answer_keys(drv, values: list[int]) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).send_keys("".join(str(v) for v in values)).perform()


def cli_json(argv: list[str]) -> dict:
    from palign.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*argv, "--format", "json"]) == 0
    return json.loads(buf.getvalue())


class Gate:
    """Holds the server's fits (``palign.serve.align.align_answers``) until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import palign.serve.align as align

        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.aborted = False
        real = align.align_answers

        def gated(*a, **kw):  # type: ignore[no-untyped-def]
            self.entered.set()
            if not self.open.wait(timeout=120) or self.aborted:
                raise RuntimeError("fit aborted by the test")
            return real(*a, **kw)

        monkeypatch.setattr(align, "align_answers", gated)

    def abort(self) -> None:
        """Let a held fit fail (its server is gone)."""
        self.aborted = True
        self.open.set()


def test_app_in_browser(  # noqa: PLR0915 - one walk through the page
    browser, tiny_lm: LoadedModel, tiny_folder: Path, papi, papi_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    monkeypatch.setenv("PALIGN_CACHE", str(tmp_path / "cache"))
    drv = browser
    inv = papi.inventory
    person = papi.person(PERSON)
    answers = person.answers(inv, "agreement", inv.shown_ids)
    assert len(answers) == 120
    values = [answers[i] for i in inv.shown_ids]
    gate = Gate(monkeypatch)
    data_dir = tmp_path / "appdata"
    port = _free_port()

    def make_app():  # type: ignore[no-untyped-def]
        cfg = ServeConfig(served_model_name="tiny", data=papi_dir, threads=1)
        return create_ui_app(_model(tiny_lm), data_dir, cfg, UIConfig(fit_options=dict(FIT)))

    with serve_in_thread(make_app(), port=port) as url:
        root = url[: -len("/v1")]
        drv.get(root + "/")
        wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"), what="page")
        assert drv.current_url.endswith("/app/")
        # the statements are the release's, in its order
        assert text(drv, "q-text") == inv.shown_items[0].text
        # first half: clicks for three items, keys for the rest
        for v in values[:3]:
            drv.find_element("id", f"ans-{v}").click()
        answer_keys(drv, values[3:60])
        wait(drv, lambda d: "60 of 120" in text(d, "quiz-count"), what="60 answers")
        assert text(drv, "q-text") == inv.shown_items[60].text
        shot(drv, "questionnaire")
        # a reload loses nothing (localStorage)
        drv.refresh()
        wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"), what="reload")
        assert "60 of 120" in text(drv, "quiz-count")
        assert text(drv, "q-text") == inv.shown_items[60].text
        # unanswered items: the profile says how many answers it used
        drv.find_element("id", "tab-profile").click()
        wait(drv, lambda d: text(d, "prof-note"), what="partial profile")
        assert "60 of 120" in text(drv, "prof-note") and "60 unanswered" in text(drv, "prof-note")
        assert "from your 60 answers" in text(drv, "align-what")
        drv.find_element("id", "tab-quiz").click()
        # second half with keys; arrows move back and forth without changing answers
        answer_keys(drv, values[60:])
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(drv).send_keys(Keys.ARROW_LEFT, Keys.ARROW_RIGHT).perform()
        wait(drv, lambda d: "120 of 120" in text(d, "quiz-count"), what="120 answers")
        stored = drv.execute_script("return JSON.parse(localStorage.getItem('palign.answers.v1'))")
        assert stored == answers

        # profile == palign data person (palign's own scoring), for every trait and facet
        drv.find_element("id", "q-done").click()
        prof = wait(
            drv,
            lambda d: d.execute_script(
                "const p=window.__palignProfile; return p && p.answered===120 ? p : null"
            ),
            what="full profile",
        )
        ref = cli_json(["data", "person", PERSON, "--data", str(papi_dir)])
        for row in prof["traits"]:
            assert row["score"] == ref["traits"][row["key"]]["shown"], row
        for row in prof["facets"]:
            assert row["score"] == ref["facets"][row["key"]]["shown"], row
        assert len(prof["facets"]) == 30
        assert len(drv.find_elements("css selector", "#prof-chart circle.you")) == 5
        assert "120 of 120" in text(drv, "prof-note")

        # align: one fit at a time (the second gets a clear message), progress streamed
        gate.open.clear()
        drv.find_element("id", "align").click()
        wait(drv, lambda d: "Fitting me on 120 answers" in text(d, "fit-status"), what="progress")
        assert gate.entered.wait(60)
        drv.execute_script("startFit()")  # a second fit while one runs
        wait(drv, lambda d: "already running" in msg(d), what="409 message")
        shot(drv, "fitting")
        gate.open.set()
        wait(drv, lambda d: "Done in" in text(d, "fit-status"), timeout=300, what="fit done")
        models = httpx.get(f"{url}/models").json()["data"]
        card = next(m for m in models if m["id"] == "tiny:me")
        assert card["palign"]["steer_position"] == "all"
        served = load_adapter(Path(card["palign"]["path"]))
        shot(drv, "profile")

        # the adapter equals palign align --answers on the same answers
        (tmp_path / "me.json").write_text(json.dumps(answers))
        model_arg = os.environ.get("PALIGN_APP_MODEL") or str(tiny_folder)
        cli_json(
            ["align", "--answers", str(tmp_path / "me.json"), "--model", model_arg,
             "--data", str(papi_dir), "--out", str(tmp_path / "cli"), "--k", "4",
             "--alpha-grid", "0,2", "--folds", "2"]
        )  # fmt: skip
        ref_ad = load_adapter(tmp_path / "cli")
        assert served.fit.heads == ref_ad.fit.heads and served.alpha == ref_ad.alpha
        torch.testing.assert_close(served.u_unit, ref_ad.u_unit, rtol=0, atol=0)

        # download the adapter folder as a zip; it loads with palign generate --adapter
        drv.find_element("id", "download").click()
        zpath = wait(
            drv, lambda d: next(iter(d.downloads.glob("*.zip")), None), what="the zip download"
        )
        time.sleep(0.5)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp_path / "unzipped")
        folder = tmp_path / "unzipped" / "me"
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter.safetensors",
            "adapter_config.json",
        ]

        # talk: the same message to both columns, streamed
        drv.find_element("id", "go-talk").click()
        drv.find_element("id", "maxtok").clear()
        drv.find_element("id", "maxtok").send_keys("8")
        drv.find_element("id", "chatin").send_keys("Hello, who are you?")
        drv.find_element("id", "send").click()
        wait(
            drv,
            lambda d: len(d.find_elements("css selector", ".turn.bot[data-done='1']")) == 2,
            what="both replies",
        )
        replies = [e.text for e in drv.find_elements("css selector", ".turn.bot")]
        assert len(replies) == 2 and all(r.strip() for r in replies), replies
        assert msg(drv) == ""
        repro = text(drv, "repro")
        assert "palign generate --adapter" in repro and "extra_body" in repro
        shot(drv, "talk")
        gen = cli_json(
            ["generate", "Hello, who are you?", "--adapter", str(folder), "--model", model_arg,
             "--max-new-tokens", "8"]
            + ([] if os.environ.get("PALIGN_APP_MODEL") else ["--force"])  # in-memory tiny id
        )  # fmt: skip
        aligned_text = drv.execute_script("return S.history.aligned[1].content")
        assert gen["text"] == aligned_text.strip()  # palign generate strips the text

        # a very long message: the server's limit, shown on the page; the message is kept
        long = "word " * 10000  # past the context of the test models
        box = drv.find_element("id", "chatin")
        drv.execute_script("arguments[0].value = arguments[1]", box, long)
        drv.find_element("id", "send").click()
        wait(drv, lambda d: "context" in msg(d), what="context length message")
        assert box.get_attribute("value") == long

        # a server restart during a fit: a clear message, the answers survive
        open_profile(drv)
        gate.open.clear()
        drv.find_element("id", "align").click()
        wait(drv, lambda d: "Fitting" in text(d, "fit-status"), what="second fit")
        # the server stops with the fit held; after its graceful shutdown (5 s, which cuts
        # the page's progress stream) the held fit fails so the old server's loop can end
        threading.Timer(8.0, gate.abort).start()
    wait(drv, lambda d: "Lost the connection" in msg(d), what="restart message")
    with serve_in_thread(make_app(), port=port) as url:
        drv.refresh()
        wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"), what="back")
        assert "120 of 120" in text(drv, "quiz-count")
        # the personality fitted before the restart is served again from the data folder
        assert "tiny:me" in [m["id"] for m in httpx.get(f"{url}/models").json()["data"]]
        # delete it and the answers
        open_profile(drv)
        assert drv.find_element("id", "delete").is_displayed()
        drv.find_element("id", "delete").click()
        wait(drv, lambda d: "Deleted personality me" in msg(d), what="deleted")
        assert "tiny:me" not in [m["id"] for m in httpx.get(f"{url}/models").json()["data"]]
        assert not (data_dir / "adapters" / "me").exists()
        assert drv.execute_script("return localStorage.getItem('palign.answers.v1')") == "{}"


def test_app_api_key_in_browser(browser, tiny_lm: LoadedModel, papi_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """With --api-key the page asks for the key; a wrong one gets a clear message."""
    drv = browser
    cfg = ServeConfig(served_model_name="tiny", data=papi_dir, threads=1, api_key="s3cret")
    app = create_ui_app(tiny_lm, tmp_path / "appdata", cfg, UIConfig(fit_options=dict(FIT)))
    with serve_in_thread(app) as url:
        drv.get(url[: -len("/v1")] + "/app/")
        wait(drv, lambda d: d.find_element("id", "keybox").is_displayed(), what="key prompt")
        assert "needs an API key" in msg(drv)
        drv.find_element("id", "apikey").send_keys("wrong")
        drv.find_element("css selector", "#keyform button").click()
        wait(drv, lambda d: "Wrong API key" in msg(d), what="wrong key message")
        assert not drv.execute_script("return document.body.dataset.ready")
        drv.find_element("id", "apikey").clear()
        drv.find_element("id", "apikey").send_keys("s3cret")
        drv.find_element("css selector", "#keyform button").click()
        wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"), what="ready")
        assert not drv.find_element("id", "keybox").is_displayed()
        assert text(drv, "q-text")


def test_profile_buttons_do_not_jump_while_the_chart_loads(  # type: ignore[no-untyped-def]
    browser, tiny_lm: LoadedModel, papi, papi_dir: Path, tmp_path: Path
) -> None:
    """The chart is drawn after a fetch, above the align button: its place is held meanwhile.

    With the profile fetch held back, the align button may move only by the note's
    few lines of text (which arrive with the profile), not by the chart's height, so that a
    click sent as the tab opens still lands on the button.
    """
    drv = browser
    inv = papi.inventory
    answers = papi.person(PERSON).answers(inv, "agreement", inv.shown_ids)
    cfg = ServeConfig(served_model_name="tiny", data=papi_dir, threads=1)
    app = create_ui_app(tiny_lm, tmp_path / "appdata", cfg, UIConfig(fit_options=dict(FIT)))
    with serve_in_thread(app) as url:
        drv.get(url[: -len("/v1")] + "/app/")
        wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"), what="page")
        drv.execute_script(
            "localStorage.setItem('palign.answers.v1', arguments[0])", json.dumps(answers)
        )
        drv.refresh()
        wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"), what="reload")
        # the profile fetch waits until the test lets it go (no timer: nothing to race)
        drv.execute_script(
            "const f = window.fetch; const held = new Promise((r) => { window.__letGo = r; });"
            " window.fetch = async (u, o) => {"
            " if (String(u).includes('/app/api/profile')) await held;"
            " return f(u, o); }"
        )  # fmt: skip
        top = "const b = document.getElementById('align').getBoundingClientRect(); return b.top + window.scrollY"
        drv.find_element("id", "tab-profile").click()
        before = drv.execute_script(top)
        assert not drv.execute_script("return window.__palignProfile")  # still loading
        drv.execute_script("window.__letGo()")
        wait(drv, lambda d: d.execute_script("return window.__palignProfile"), what="profile")
        after = drv.execute_script(top)
        chart_h = drv.execute_script(
            "return document.getElementById('prof-chart').getBoundingClientRect().height"
        )
        assert chart_h > 150  # the chart's height: what the button would jump by
        print(f"align button top: {before} while loading, {after} drawn; chart {chart_h}")
        assert abs(after - before) < 80, (before, after, chart_h)
