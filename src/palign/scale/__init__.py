"""Scale-out: one ``palign eval`` over many Ray workers, results identical to one process.

The driver (:func:`run_eval_ray`) shards the run's person groups (exactly the groups a
single process would form, so per-person numbers are the same bytes) interleaved over Ray
actors (:class:`~palign.scale.worker.EvalWorker`, one model copy each, one GPU per actor when
the cluster has GPUs), writes each person's file as its group arrives (resume works as for a
single process), replaces actors that die and retries their unfinished groups (bounded), and
writes one merged ``results.json``. Ray is optional: ``pip install 'palign[ray]'``.
"""

from palign.scale.driver import RAY_EXTRA_HINT, require_ray, run_eval_ray
from palign.scale.shard import interleave

__all__ = ["RAY_EXTRA_HINT", "interleave", "require_ray", "run_eval_ray"]
