"""``palign app``: a single-page web app on top of ``palign serve`` ("align it to me").

A person answers the questionnaire in the browser, sees their Big Five profile next to the
PAPI population, fits their PAS personality with one button (through the server's
``POST /v1/personalities``) and talks to it next to the unaligned model. The page is plain
HTML/CSS/JS shipped in this package (``static/``), served from the same process as the
OpenAI-compatible API; it needs nothing from the internet.

>>> from palign.serve.ui import create_ui_app
>>> app = create_ui_app("smollm2", data_dir="~/.local/share/palign/app")
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)   # then open http://127.0.0.1:8000/

See ``docs/app.md``.
"""

from __future__ import annotations

from palign.serve.ui.routes import UIConfig, create_ui_app, default_data_dir, install_ui

__all__ = ["UIConfig", "create_ui_app", "default_data_dir", "install_ui"]
