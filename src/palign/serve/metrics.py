"""Prometheus metrics of a server (``GET /metrics``, text exposition format).

Each app has its own :class:`prometheus_client.CollectorRegistry` (several servers in one
process do not mix their counts). Names follow Prometheus conventions with a ``palign_``
prefix; the ``personality`` label is the personality name, ``""`` for the base model:

- ``palign_requests_total{endpoint, personality}``: accepted generation requests;
- ``palign_prompt_tokens_total{personality}`` / ``palign_generation_tokens_total{personality}``:
  tokens of finished requests (as ``usage`` counts them);
- ``palign_requests_running`` / ``palign_requests_waiting``: sequences decoding / queued
  (gauges read from the engine at scrape time);
- ``palign_batch_size``: rows of each decoding step (histogram);
- ``palign_personalities``: registered personalities; ``palign_alignments_running``: fits
  of uploaded answers in progress.
"""

from __future__ import annotations

from typing import Any

from palign.errors import PalignError

__all__ = ["ServeMetrics"]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """The counters, gauges and histogram of one server.

    Args:
        engine: the :class:`palign.serve.engine.Engine` (gauges read its load; its steps feed
            the batch-size histogram).
        registry: the :class:`palign.serve.registry.Registry` of personalities.
    """

    def __init__(self, engine: Any, registry: Any) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise PalignError(
                "palign serve needs prometheus-client (the serve extra); install it with "
                "pip install 'palign[serve]'"
            ) from None
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter(
            "palign_requests",
            "Accepted generation requests",
            ["endpoint", "personality"],
            registry=r,
        )
        self.prompt_tokens = pc.Counter(
            "palign_prompt_tokens",
            "Prompt tokens of finished requests",
            ["personality"],
            registry=r,
        )
        self.generation_tokens = pc.Counter(
            "palign_generation_tokens",
            "Generated tokens of finished requests",
            ["personality"],
            registry=r,
        )
        running = pc.Gauge("palign_requests_running", "Sequences decoding now", registry=r)
        running.set_function(lambda: engine.load["running"])
        waiting = pc.Gauge("palign_requests_waiting", "Sequences waiting (queue depth)", registry=r)
        waiting.set_function(lambda: engine.load["waiting"])
        pers = pc.Gauge("palign_personalities", "Registered personalities", registry=r)
        pers.set_function(lambda: len(registry))
        self.alignments = pc.Gauge(
            "palign_alignments_running", "Fits of uploaded answers in progress", registry=r
        )
        self.batch_size = pc.Histogram(
            "palign_batch_size", "Rows per decoding step", buckets=BATCH_BUCKETS, registry=r
        )
        engine.step_observer = self.batch_size.observe

    def request(self, endpoint: str, personality: str | None) -> None:
        """Count one accepted request."""
        self.requests.labels(endpoint, personality or "").inc()

    def tokens(self, personality: str | None, prompt: int, generated: int) -> None:
        """Count the tokens of one finished request."""
        self.prompt_tokens.labels(personality or "").inc(prompt)
        self.generation_tokens.labels(personality or "").inc(generated)

    def exposition(self) -> tuple[bytes, str]:
        """``(body, content type)`` of ``GET /metrics``."""
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
