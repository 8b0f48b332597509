"""``palign serve``: an OpenAI-compatible server, one base model, many personalities.

- :mod:`palign.serve.engine`: the batching generation loop with per-row PAS steering;
- :mod:`palign.serve.sampling`: next-token choice in vLLM's order (top_k, min_p, penalties);
- :mod:`palign.serve.registry`: the served personalities (``<base>:<person>``);
- :mod:`palign.serve.app`: the FastAPI app (:func:`create_app`), with
  :mod:`~palign.serve.personalities` (run-time personalities), :mod:`~palign.serve.extras`
  (``/version``, ``/tokenize``, ``/detokenize``, ``/metrics``), :mod:`~palign.serve.metrics`
  (Prometheus) and :mod:`~palign.serve.guard` (API key, body size);
- :mod:`palign.serve.testing`: :func:`serve_in_thread` (a real server for tests);
- :mod:`palign.serve.export`: one person baked into a plain Hugging Face model folder.

See ``docs/serving.md``. FastAPI/uvicorn are imported only by ``create_app`` and
``serve_in_thread`` (the ``serve`` extra).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve_in_thread"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`palign.serve.app.create_app`."""
    from palign.serve.app import create_app as _create

    return _create(*args, **kwargs)


def serve_in_thread(*args: Any, **kwargs: Any) -> Any:
    """See :func:`palign.serve.testing.serve_in_thread`."""
    from palign.serve.testing import serve_in_thread as _serve

    return _serve(*args, **kwargs)
