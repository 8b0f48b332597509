"""Take the screenshots of docs/app.md: ``palign app`` on a real model in headless Chromium.

    PALIGN_DATA=... python docs/app_screenshots.py --model smollm2 --person 172481 \\
        --out docs/img --k 4 --alpha-grid 0,2 --folds 2

Starts the app on a free loopback port (data folder: a temporary one), answers the
questionnaire with a PAPI person's answers through the page (keys), fits with the given
options, sends one message to both columns, and saves app-questionnaire.png,
app-profile.png and app-talk.png. Needs Debian's chromium + chromium-driver and selenium.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_app_browser import answer_keys, msg, text, wait  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--person", default="172481")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--alpha-grid", default="0,2")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--message", default="How do you like to spend a free weekend?")
    ap.add_argument("--max-tokens", type=int, default=60)
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from palign.data import load_dataset
    from palign.serve.app import ServeConfig
    from palign.serve.testing import serve_in_thread
    from palign.serve.ui import UIConfig, create_ui_app

    ds = load_dataset(None, "ipip-neo")
    inv = ds.inventory
    answers = ds.person(args.person).answers(inv, "agreement", inv.shown_ids)
    values = [answers[i] for i in inv.shown_ids if i in answers]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fit = {
        "k": args.k,
        "alpha_grid": [float(a) for a in args.alpha_grid.split(",")],
        "folds": args.folds,
    }
    tmp = Path(tempfile.mkdtemp(prefix="palign-shots-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1100,1000", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
    ):  # fmt: skip
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    app = create_ui_app(args.model, tmp / "data", ServeConfig(), UIConfig(fit_options=fit))
    try:
        with serve_in_thread(app) as url:
            drv.get(url[: -len("/v1")] + "/")
            wait(drv, lambda d: d.execute_script("return document.body.dataset.ready"))
            answer_keys(drv, values[:37])
            drv.save_screenshot(str(out / "app-questionnaire.png"))
            answer_keys(drv, values[37:])
            drv.find_element("id", "q-done").click()
            wait(drv, lambda d: d.execute_script("return window.__palignProfile"))
            t0 = time.time()
            drv.find_element("id", "align").click()
            wait(drv, lambda d: "Done in" in text(d, "fit-status"), timeout=3600, what="fit")
            print(f"fit: {time.time() - t0:.0f} s; {text(drv, 'fit-status')}", file=sys.stderr)
            drv.execute_script("window.scrollTo(0, 0)")
            drv.save_screenshot(str(out / "app-profile.png"))
            drv.find_element("id", "go-talk").click()
            drv.find_element("id", "maxtok").clear()
            drv.find_element("id", "maxtok").send_keys(str(args.max_tokens))
            drv.find_element("id", "chatin").send_keys(args.message)
            drv.find_element("id", "send").click()
            wait(
                drv,
                lambda d: len(d.find_elements("css selector", ".turn.bot[data-done='1']")) == 2,
                timeout=1200,
                what="replies",
            )
            assert not msg(drv), msg(drv)
            drv.save_screenshot(str(out / "app-talk.png"))
    finally:
        drv.quit()


if __name__ == "__main__":
    main()
