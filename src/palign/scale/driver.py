"""The Ray driver of a scaled-out ``palign eval`` (see :mod:`palign.scale`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palign.errors import PalignError

if TYPE_CHECKING:
    from palign.data.types import Dataset, Person
    from palign.eval.runs import RunConfig
    from palign.methods.base import Method

RAY_EXTRA_HINT = "pip install 'palign[ray]'"
DEFAULT_MAX_RETRIES = 2


def require_ray() -> Any:
    """Import Ray or raise a one-line :class:`PalignError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise PalignError(
            f"--workers/--ray-address need Ray, which is not installed; {RAY_EXTRA_HINT}"
        ) from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when a ``host:port`` / ``ray://host:port`` address does not answer.

    Ray itself retries an unreachable head for minutes; ``auto`` and other forms are left
    to Ray.
    """
    import socket

    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise PalignError(
            f"cannot reach Ray at {address} ({e.strerror or type(e).__name__}); start the "
            "cluster (ray start --head) or fix --ray-address (e.g. ray://HEAD:10001 or auto)"
        ) from None


def plan_workers(
    resources: dict[str, float],
    device: str,
    workers: int | None,
    n_groups: int,
    person_batch: int,
    cpus_per_worker: int = 1,
) -> dict[str, Any]:
    """How many actors to start and what each asks Ray for.

    One GPU per actor when the cluster has GPUs and ``device`` is not ``cpu`` (default
    count: one per GPU), else ``cpus_per_worker`` CPUs and as many torch threads (default
    count: 2). Never more actors than person groups or than the cluster holds.

    Returns ``workers``, ``wanted``, ``options`` (``actor.options`` keywords), ``threads``
    (None on GPUs) and ``notes`` (why fewer start).
    """
    gpus = int(resources.get("GPU", 0))
    if gpus >= 1 and device != "cpu":
        capacity = gpus
        opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        threads = None
        wanted = workers if workers is not None else gpus
    else:
        capacity = max(1, int(resources.get("CPU", 1)) // max(1, cpus_per_worker))
        opts = {"num_cpus": cpus_per_worker}
        threads = cpus_per_worker
        wanted = workers if workers is not None else 2
    n = min(wanted, n_groups, capacity)
    notes = []
    if n < wanted:
        why = (
            f"{n_groups} person group(s) of --person-batch {person_batch}"
            if n_groups < wanted and n_groups <= capacity
            else f"the cluster has room for {capacity}"
        )
        notes.append(f"starting {n} of {wanted} workers: {why}")
    return {"workers": n, "wanted": wanted, "options": opts, "threads": threads, "notes": notes}


def land_adapter_files(rec: dict[str, Any]) -> bool:
    """Write the LoRA adapter a worker sent back with a person record (and drop the bytes
    from the record); returns whether files were written (not when this machine already
    holds the same adapter: a worker on this node wrote it)."""
    from palign.scale.worker import ADAPTER_FILES

    files = rec.pop(ADAPTER_FILES, None)
    folder = (rec.get("info") or {}).get("adapter")
    if not files or not folder:
        return False
    from palign.train.lora import land_adapter

    return land_adapter(folder, files)


@dataclass
class _Slot:
    """One worker position: its current actor and the person groups dealt to it.

    ``ready``: the current actor finished its setup (so a death after it happened while it ran
    its first unfinished group; actors run their tasks in order). ``setup_deaths``: actors of
    this slot that died before that.
    """

    index: int
    chunks: list[int]
    actor: Any = None
    generation: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    setup_ref: Any = None
    setup_deaths: int = 0


def run_eval_ray(
    cfg: RunConfig,
    out: str | Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    dataset: Dataset | None = None,
    method: Method | None = None,
    progress: bool = True,
    max_retries: int = DEFAULT_MAX_RETRIES,
    cpus_per_worker: int = 1,
    ray_init: dict[str, Any] | None = None,
    worker_cls: type | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) an evaluation on Ray workers; same files as :func:`run_eval`.

    Args:
        cfg: the run configuration.
        out: the run folder (resumable exactly as a single-process run).
        workers: number of actors (default: one per GPU of the cluster, else 2). Fewer are
            started when the run has fewer person groups (``cfg.person_batch`` persons each).
        address: an existing cluster (``ray://host:10001``, ``auto``); None = start Ray here,
            unless it is already initialised in this process.
        dataset, method: as for :func:`run_eval`.
        progress: show a progress bar.
        max_retries: how many times a person group is retried after its worker died while
            running it (a death counts against the one group that was running, never against
            the groups queued behind it), and how many times one worker position may lose
            its actor before its setup finished.
        cpus_per_worker: CPUs (and torch threads) per actor when the cluster has no GPU.
        ray_init: extra ``ray.init`` arguments when this call starts Ray.
        worker_cls: the actor class (default :class:`~palign.scale.worker.EvalWorker`).
        on_event: called as ``on_event(kind, info)`` for ``"chunk"`` (a group arrived,
            ``info`` has ``slot``, ``persons``, ``actors``) and ``"replaced"``.

    Returns:
        The content of ``results.json`` (with a ``scale`` entry: workers, replacements...).
    """
    ray = require_ray()
    from tqdm.auto import tqdm

    from palign.data.types import Dataset as _Dataset
    from palign.eval.runs import (
        _check_config,
        finish_run,
        person_chunks,
        plan_run,
        run_eval,
        write_json_atomic,
    )
    from palign.scale.shard import interleave
    from palign.scale.worker import EvalWorker

    if workers is not None and workers < 1:
        raise PalignError("--workers must be at least 1")
    if max_retries < 0:
        raise PalignError("max_retries must be at least 0")
    plan = plan_run(cfg, out, dataset=dataset, method=method)
    if not plan.todo:  # nothing left: the single-process path writes results.json, no Ray
        return run_eval(cfg, out, dataset=plan.dataset, method=plan.method, progress=progress)
    chunks: list[list[Person]] = person_chunks(plan.todo, cfg.person_batch)

    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"log_to_driver": False}
        if address is None:  # a new local instance (an existing cluster refuses these)
            kw["include_dashboard"] = False
        from palign.methods.alpha_rules import RULES_ENV

        if os.environ.get(RULES_ENV):  # workers resolve the same tuned alpha rules
            kw["runtime_env"] = {"env_vars": {RULES_ENV: os.environ[RULES_ENV]}}
        kw.update(ray_init or {})
        if address:
            check_reachable(address)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PalignError(
                f"cannot start or reach Ray at {address or 'this machine'} ({first}); "
                "check --ray-address (e.g. ray://HEAD:10001 or auto)"
            ) from None
    t_ray = time.perf_counter() - t0
    plan_w = plan_workers(
        ray.cluster_resources(), cfg.device, workers, len(chunks), cfg.person_batch, cpus_per_worker
    )
    n, opts, threads, wanted, notes = (
        plan_w["workers"],
        plan_w["options"],
        plan_w["threads"],
        plan_w["wanted"],
        plan_w["notes"],
    )
    if progress:
        for note in notes:
            print(f"palign: note: {note}", file=sys.stderr)

    remote_cls = ray.remote(max_restarts=0, max_task_retries=0)(worker_cls or EvalWorker)
    base = _Dataset(plan.dataset.inventory, [], plan.dataset.source)
    base_ref = ray.put(base)
    root = getattr(plan.method, "adapter_root", None)
    if root is not None:  # files a method writes (training baselines): workers have another cwd
        plan.method.adapter_root = Path(root).resolve()  # type: ignore[attr-defined]
    method_ref = ray.put(plan.method)
    slots = [_Slot(i, idx) for i, idx in enumerate(interleave(len(chunks), n))]
    finished: set[int] = set()
    attempts = [0] * len(chunks)
    pending: dict[Any, tuple[int, int, int | None]] = {}  # ref -> (slot, generation, chunk)
    replaced = 0
    captures = 0  # activation captures computed by workers (the rest read the cache)
    entries_ref: Any = None
    setup_info: dict[str, Any] = {}
    done = plan.done

    def start(slot: _Slot) -> None:
        slot.actor = remote_cls.options(**opts).remote(cfg, base_ref, method_ref, threads)
        slot.generation += 1
        slot.info = {}
        slot.ready = False
        slot.setup_ref = None
        load = slot.actor.load.remote()
        pending[load] = (slot.index, slot.generation, None)

    def submit(slot: _Slot, setup: bool = True) -> None:
        """Set ``slot``'s actor up and queue its unfinished groups (an actor runs in order)."""
        if setup:
            ref = slot.actor.setup.remote(entries_ref)
            pending[ref] = (slot.index, slot.generation, None)
            slot.setup_ref = ref
        else:
            slot.ready = True
        for c in slot.chunks:
            if c not in finished:
                pending[slot.actor.run_chunk.remote(chunks[c])] = (slot.index, slot.generation, c)

    def task_error(e: Exception) -> PalignError | Exception:
        cause = getattr(e, "cause", None)
        if isinstance(cause, PalignError):
            return PalignError(str(cause))
        return e

    bar: Any = None

    def accept(slot: _Slot, c: int, value: list[dict[str, Any]]) -> None:
        """Write a finished group's person files (the only writer) and count it done."""
        if c in finished:
            return
        for rec in value:
            land_adapter_files(rec)
            write_json_atomic(plan.out / "persons" / f"{rec['person']}.json", rec)
            done[rec["person"]] = rec
        finished.add(c)
        bar.update(len(value))
        if on_event:
            on_event(
                "chunk",
                {
                    "slot": slot.index,
                    "persons": [r["person"] for r in value],
                    "actors": [s.actor for s in slots],
                    "remaining": {
                        s.index: [k for k in s.chunks if k not in finished] for s in slots
                    },
                },
            )

    try:
        for s in slots:
            start(s)
        # the first worker sets up alone and exports the shared caches (PAS activations)
        first = slots[0]
        while entries_ref is None:
            ref = first.actor.setup.remote(None, True)
            try:
                setup_info = ray.get(ref)
            except ray.exceptions.RayActorError:
                replaced += 1
                if replaced > max_retries:
                    raise PalignError(
                        f"the first Ray worker died {replaced} times during setup; see the "
                        "Ray logs (ray status, /tmp/ray/session_latest/logs)"
                    ) from None
                start(first)
                continue
            except ray.exceptions.RayTaskError as e:
                raise task_error(e) from None
            entries_ref = ray.put(setup_info.pop("entries"))
            captures += int(setup_info.get("captures", 0))
        # the model loaded and the method is ready: claim the folder (same weights only, as
        # a single process does; the first worker's fingerprint of its weight files)
        _check_config(plan.out, cfg, weights=setup_info.get("weights_fingerprint"))
        # the others set up from the shipped cache entries; the first is ready
        for s in slots:
            submit(s, setup=s is not first)
        bar = tqdm(
            total=len(plan.persons),
            initial=len(done),
            desc=f"{cfg.method} x{n} workers",
            unit="person",
            disable=not progress,
        )
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            si, gen, c = pending.pop(ref)
            slot = slots[si]
            if gen != slot.generation:
                continue  # a result of an actor already replaced
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                # the actor died: keep what it had already returned, redo the rest
                refs = [r for r, v in pending.items() if v[:2] == (si, gen)]
                mine = {r: pending.pop(r)[2] for r in refs}
                # a group the actor finished may reach the driver after the news of its death
                # (a busy machine): one brief wait for all of them (5 s in all, not per group);
                # a task that never ran fails at once
                done_now, _ = (
                    ray.wait(list(mine), num_returns=len(mine), timeout=5.0) if mine else ([], [])
                )
                for r in done_now:
                    k = mine[r]
                    try:
                        got = ray.get(r)
                    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
                        continue
                    if k is not None:
                        accept(slot, k, got)
                    elif r is slot.setup_ref:
                        slot.ready = True
                lost = [k for k in slot.chunks if k not in finished]
                if lost and slot.ready:
                    # the actor ran its groups in order: it died in the first unfinished one;
                    # the groups queued behind it never started and are not charged
                    k = lost[0]
                    attempts[k] += 1
                    if attempts[k] > max_retries:
                        ids = ", ".join(p.id for p in chunks[k])
                        raise PalignError(
                            f"persons {ids} were lost with {attempts[k]} workers "
                            f"({type(e).__name__}); finished persons are kept: rerun the "
                            "same command to resume"
                        ) from None
                elif lost:
                    slot.setup_deaths += 1
                    if slot.setup_deaths > max_retries:
                        raise PalignError(
                            f"Ray worker {si} died {slot.setup_deaths} times before its setup "
                            f"finished ({type(e).__name__}); finished persons are kept: see "
                            "the Ray logs (ray status), then rerun the same command to resume"
                        ) from None
                try:
                    ray.kill(slot.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                replaced += 1
                start(slot)
                submit(slot)
                if on_event:
                    on_event("replaced", {"slot": si, "groups": lost})
                continue
            except ray.exceptions.RayTaskError as e:
                raise task_error(e) from None
            if c is None:  # a load or setup result
                if ref is slot.setup_ref:
                    slot.ready = True
                slot.info.update(value if isinstance(value, dict) else {})
                captures += int(slot.info.pop("captures", 0) or 0)
                continue
            accept(slot, c, value)
    finally:
        if bar is not None:
            bar.close()
        for s in slots:
            if s.actor is not None:
                try:
                    ray.kill(s.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        if started:
            ray.shutdown()

    model = setup_info.get("model") or {"spec": cfg.model}
    timings = {
        "load_s": float(slots[0].info.get("load_s", 0.0)),
        "setup_s": float(setup_info.get("setup_s", 0.0)),
        "run_s": time.perf_counter() - t0,
    }
    scale = {
        "executor": "ray",
        "ray": ray.__version__,
        "address": address or ("local" if started else "existing Ray session"),
        "workers": n,
        "workers_requested": wanted,
        "resources": opts,
        "person_groups": len(chunks),
        "replaced_workers": replaced,
        "activation_captures": captures,
        "ray_start_s": round(t_ray, 3),
        "notes": notes,
    }
    return finish_run(cfg, plan, model, timings, extra={"scale": scale})
