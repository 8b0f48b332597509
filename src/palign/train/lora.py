"""LoRA adapters of the training baselines: PEFT config, training context, saving, readout.

Adapters are standard PEFT folders (``adapter_config.json`` with ``"peft_type": "LORA"`` +
``adapter_model.safetensors``) plus :data:`PALIGN_META` (``palign_train.json``: base model,
method, person, the full training configuration, loss summary, seconds). They are written to
a temporary sibling folder and renamed into place, so a failed or interrupted run never leaves
a half-written adapter.

Training wraps the shared base model in place (``peft.get_peft_model``) and unwraps it
afterwards (``unload``), restoring the training flag, ``requires_grad`` and ``use_cache``; the
frozen base (adapter disabled) is DPO's reference model. For readouts,
:func:`active_lora` injects a saved adapter into the model for the duration of a block, so a
plain ``lm.model(...)`` forward is the LoRA model's forward.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from palign import __version__
from palign.errors import PalignError

if TYPE_CHECKING:
    from palign.models.loading import LoadedModel
    from palign.train.config import TrainConfig

PALIGN_META = "palign_train.json"
"""palign's record next to the PEFT files of a trained adapter."""
META_KIND = "palign-lora-adapter"


def lora_config(cfg: TrainConfig) -> Any:
    """The ``peft.LoraConfig`` of a training configuration (causal LM, attention projections)."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.targets(),
        bias="none",
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def quiet_libraries(progress: bool = True) -> Iterator[None]:
    """Silence datasets' map bars and transformers/TRL info chatter during training (and,
    without ``progress``, TRL's own bars)."""
    import datasets
    import transformers

    bars = datasets.utils.logging.is_progress_bar_enabled()
    level = transformers.logging.get_verbosity()
    tqdm_env = os.environ.get("TQDM_DISABLE")
    datasets.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        with warnings.catch_warnings():  # transformers' deprecation notices inside TRL
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env


def strip_lora(model: Any) -> Any:
    """Remove every PEFT tuner layer from ``model`` in place (each replaced by its base layer).

    Also drops the ``peft_config`` attribute PEFT may leave behind. Returns ``model``.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, module.get_base_layer())
    if "peft_config" in getattr(model, "__dict__", {}):
        del model.__dict__["peft_config"]
    return model


@contextlib.contextmanager
def lora_training(lm: LoadedModel, seed: int) -> Iterator[None]:
    """Let a TRL trainer wrap ``lm.model`` with a fresh LoRA adapter; restore it afterwards.

    The trainer gets the base model and a ``peft_config`` (so TRL's reference is the base with
    the adapter disabled); PEFT injects the LoRA layers into ``lm.model`` in place. On exit
    they are removed, and the base model's training flag, ``requires_grad`` flags and
    ``config.use_cache`` are restored, so other methods and later persons see the untouched
    base model. The LoRA initialisation is seeded with ``seed``.
    """
    model = lm.model
    training = model.training
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    use_cache = getattr(model.config, "use_cache", None)
    # TRL patches instance forwards (its fused log-prob head); remember the originals
    forwards = {id(m): m.__dict__.get("forward") for m in model.modules()}
    torch.manual_seed(seed)
    try:
        yield
    finally:
        strip_lora(model)
        for m in model.modules():
            if (
                id(m) in forwards
                and "forward" in m.__dict__
                and m.__dict__["forward"] is not forwards[id(m)]
            ):
                if forwards[id(m)] is None:
                    del m.__dict__["forward"]
                else:
                    m.__dict__["forward"] = forwards[id(m)]
        for n, p in model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])
        if use_cache is not None:
            model.config.use_cache = use_cache
        model.train(training)
        model.zero_grad(set_to_none=True)


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory failure (CUDA, MPS or the CPU allocator)."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg
    )


def oom_error(method: str, person: str, cfg: TrainConfig) -> PalignError:
    """The one-line error of a training run that ran out of memory."""
    return PalignError(
        f"out of memory while training {method} for person {person} (micro_batch "
        f"{cfg.micro_batch}); lower it with --train-micro-batch (the effective --train-batch is "
        "kept by gradient accumulation) or use a smaller model"
    )


def loss_summary(
    history: list[dict[str, Any]], key: str = "loss", points: int = 11
) -> dict[str, Any]:
    """Summary of a Trainer log history: first/last/min loss, means of the first and last
    10% of logged steps, and about ``points`` evenly spaced (step, loss) pairs."""
    rows = [(int(h["step"]), float(h[key])) for h in history if key in h and "step" in h]
    if not rows:
        return {"logged": 0}
    vals = [v for _, v in rows]
    tenth = max(1, len(vals) // 10)
    idx = sorted({round(i * (len(rows) - 1) / max(1, points - 1)) for i in range(points)})
    return {
        "logged": len(rows),
        "first": round(vals[0], 5),
        "last": round(vals[-1], 5),
        "min": round(min(vals), 5),
        "mean_first_10pct": round(sum(vals[:tenth]) / tenth, 5),
        "mean_last_10pct": round(sum(vals[-tenth:]) / tenth, 5),
        "curve": [[rows[i][0], round(rows[i][1], 5)] for i in idx],
    }


def progress_callback(desc: str, total: int, enabled: bool = True, key: str = "loss") -> Any:
    """A ``TrainerCallback`` drawing a tqdm bar of the optimiser steps with the latest loss."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class _Bar(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=not enabled)

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if self.bar is not None and logs and key in logs:
                self.bar.set_postfix({key: f"{float(logs[key]):.4f}"}, refresh=False)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is not None:
                self.bar.close()

    return _Bar()


PROJECTION_WARN_S = 3600.0
"""A CPU training run projected past this many seconds warns after its first step."""


def projection_callback(
    desc: str, steps: int, persons: int, device: str, threshold: float = PROJECTION_WARN_S
) -> Any:
    """A ``TrainerCallback`` that, on CPU, times the first optimiser step and warns on stderr
    when ``steps`` x ``persons`` of them project past ``threshold`` seconds (a projection
    from one measured step, printed as such); silent on GPUs."""
    import sys

    from transformers import TrainerCallback

    class _Projection(TrainerCallback):
        t0 = 0.0
        done = False

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.done or device != "cpu":
                return
            self.done = True
            first = time.perf_counter() - self.t0
            total = first * steps * max(1, persons)
            if total > threshold:
                who = f" x {persons} persons" if persons > 1 else ""
                print(
                    f"palign: warning: {desc} on CPU: the first optimiser step took {first:.1f} s, "
                    f"so {steps} steps{who} project to about {total / 3600:.1f} h (a projection "
                    "from one step); lower --train-steps or --train-batch, or use a GPU",
                    file=sys.stderr,
                    flush=True,
                )

    return _Projection()


def projection_callbacks(method: str, cfg: TrainConfig, lm: LoadedModel, persons: int) -> list:
    """``[projection_callback(...)]`` for a run of ``persons`` persons still to train (none
    when ``persons`` is 0: the caller has warned already or does not want it)."""
    if persons < 1:
        return []
    return [projection_callback(method, cfg.steps, persons, lm.device.type)]


def drop_printer(trainer: Any) -> None:
    """Remove the Trainer's log printer (our progress bar shows the loss instead)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def trainer_common_args(
    cfg: TrainConfig, lm: LoadedModel, seed: int, output_dir: str
) -> dict[str, Any]:
    """Arguments shared by the TRL configs (steps, lr, batch, warm-up, seed, device, precision)."""
    dev = lm.device.type
    return {
        "output_dir": output_dir,
        "max_steps": cfg.steps,
        "learning_rate": cfg.lr,
        "per_device_train_batch_size": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "warmup_steps": round(cfg.warmup_ratio * cfg.steps),
        "lr_scheduler_type": "linear",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "report_to": [],
        "seed": seed,
        "data_seed": seed,
        "use_cpu": dev == "cpu",
        "bf16": dev != "cpu" and lm.dtype == torch.bfloat16,
        "fp16": dev != "cpu" and lm.dtype == torch.float16,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def save_lora(pm: Any, folder: Path, meta: dict[str, Any]) -> Path:
    """Save the active adapter of ``pm`` as a PEFT folder + :data:`PALIGN_META`, atomically.

    Written into a temporary sibling and renamed into place (an existing adapter is replaced).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        pm.save_pretrained(str(tmp), selected_adapters=["default"])
        # PEFT names the adapter folder after the adapter only when it is not "default"
        if not (tmp / "adapter_config.json").is_file():
            raise PalignError(f"PEFT wrote no adapter_config.json into {tmp}")
        record = {
            "kind": META_KIND,
            "palign_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **meta,
        }
        (tmp / PALIGN_META).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        _install(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _install(tmp: Path, folder: Path) -> None:
    """Give the files of ``tmp`` the usual modes and rename it to ``folder`` (replacing it)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o755 & ~umask)
    for f in tmp.iterdir():
        if f.is_file():
            os.chmod(f, 0o644 & ~umask)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def adapter_files(folder: str | Path) -> dict[str, bytes]:
    """The files of a saved adapter folder, by name (to send them to another machine)."""
    return {f.name: f.read_bytes() for f in sorted(Path(folder).iterdir()) if f.is_file()}


def land_adapter(folder: str | Path, files: dict[str, bytes]) -> bool:
    """Write an adapter's files (from :func:`adapter_files`) to ``folder``, atomically.

    Nothing is written when ``folder`` already holds the same :data:`PALIGN_META` (the same
    adapter, e.g. written by a worker on this machine). Returns whether it wrote.
    """
    folder = Path(folder)
    meta = folder / PALIGN_META
    if meta.is_file() and PALIGN_META in files and meta.read_bytes() == files[PALIGN_META]:
        return False
    if any(Path(name).name != name or name in ("", ".", "..") for name in files):
        raise PalignError(f"refusing adapter file names with a folder part for {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        # the record last: a folder with palign_train.json is complete
        for name in sorted(files, key=lambda n: n == PALIGN_META):
            (tmp / name).write_bytes(files[name])
        _install(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def read_meta(folder: str | Path) -> dict[str, Any] | None:
    """:data:`PALIGN_META` of an adapter folder, or None when absent/unreadable."""
    p = Path(folder) / PALIGN_META
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def is_lora_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a PEFT adapter (``adapter_config.json`` with ``peft_type``)."""
    p = Path(folder) / "adapter_config.json"
    if not p.is_file():
        return False
    try:
        return "peft_type" in json.loads(p.read_text())
    except (json.JSONDecodeError, TypeError):
        return False


@contextlib.contextmanager
def active_lora(lm: LoadedModel, folder: str | Path) -> Iterator[None]:
    """Inject the adapter in ``folder`` into ``lm.model`` for the block (inference only).

    Inside the block ``lm.model(...)`` is the LoRA model's forward (``lm.model`` itself is
    modified in place by PEFT and restored on exit).
    """
    from peft import PeftModel

    if not is_lora_folder(folder):
        raise PalignError(f"{folder} is not a PEFT LoRA adapter folder (no adapter_config.json)")
    model = lm.model
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    training = model.training
    try:
        pm = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as err:
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PalignError(
            f"cannot load the LoRA adapter {folder} onto {lm.model_id} ({msg}); use the base "
            "model it was trained on"
        ) from None
    pm.eval()
    try:
        yield
    finally:
        strip_lora(model)
        for n, p in model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])
        model.train(training)


def load_lora_model(
    folder: str | Path, model: str | None = None, device: str = "auto", dtype: str = "auto"
) -> tuple[LoadedModel, dict[str, Any]]:
    """Load the base model recorded with a LoRA adapter (or ``model``) with the adapter applied.

    Returns the :class:`LoadedModel` whose ``model`` carries the injected adapter (a plain
    transformers model, ready for ``generate``), and the adapter's palign record.
    """
    from peft import PeftModel

    from palign.models.loading import load_model

    meta = read_meta(folder) or {}
    spec = model or meta.get("model_spec")
    if not spec:
        cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
        spec = cfg.get("base_model_name_or_path")
    if not spec:
        raise PalignError(f"{folder} does not record its base model; pass --model")
    lm = load_model(spec, device=device, dtype=dtype)
    try:
        PeftModel.from_pretrained(lm.model, str(folder), is_trainable=False).eval()
    except (ValueError, RuntimeError, KeyError) as err:
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PalignError(
            f"cannot load the LoRA adapter {folder} onto {lm.model_id} ({msg}); use the base "
            "model it was trained on (--model)"
        ) from None
    return lm, meta


def run_training(
    train: Callable[[], Any], method: str, person: str, cfg: TrainConfig
) -> tuple[Any, float]:
    """Call ``train()`` with out-of-memory failures turned into one-line errors; returns
    (result, seconds)."""
    t = time.perf_counter()
    try:
        out = train()
    except PalignError:
        raise
    except (RuntimeError, MemoryError) as err:
        if is_oom(err):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise oom_error(method, person, cfg) from None
        raise
    return out, time.perf_counter() - t


class LoRAAdapter:
    """A LoRA adapter as :class:`palign.chat.AlignedModel` sees it.

    The adapter's weights are already injected into the model by :func:`load_lora_model`;
    this object carries the palign record (``config``: person, method, training) and answers
    the steering questions of the chat code: no steering vectors, and no strength to change.
    """

    alpha = 1.0

    def __init__(self, config: dict[str, Any], path: Path | None = None) -> None:
        self.config = config
        self.path = path

    def u_at(self, alpha: float | None = None) -> None:
        """No steering vectors; an ``alpha`` other than 1 is refused (LoRA has no strength knob)."""
        if alpha is not None and float(alpha) != 1.0:
            raise PalignError(
                "--alpha applies to PAS adapters; a LoRA adapter (dpo/grpo) has no steering "
                "strength, drop --alpha"
            )
        return None
