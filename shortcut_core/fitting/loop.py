"""The training loop: AdamW, learning rate x0.1 after ``lr_drop_step`` steps, gradient clipping, an EMA of the
weights (what gets exported), held-out figures every ``eval_every`` steps, and checkpoints a run resumes from
exactly (model, EMA, optimizer, grad scaler, RNG states, step, history, written atomically).

``train`` reads top to bottom: set up (or resume) the state, then per step: the batch, the loss over every rank,
the optimizer and EMA updates, then logging, validation and checkpoints.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

from ..dtypes import autocast, resolve_amp
from ..files import read_pickle
from ..generator import MaskedGenerator, ShortcutError
from ..outputs import atomic_write
from ..shortcut import ShortcutConfig, build_shortcut
from .data import TrajectorySamples
from .distributed import DistInfo, barrier, sum_over_ranks
from .objective import BatchContexts, Chain, combine, evaluate, loss_sums, nonfinite_message, rollout_inputs
from .settings import RESULT_SETTINGS, FitSettings, RunOptions

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "migm-shortcut-checkpoint"


# ------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    try:
        state = read_pickle(Path(path))
    except ShortcutError as err:
        raise ShortcutError(f"{path}: not a readable training checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ShortcutError(f"{path}: not a {CHECKPOINT_FORMAT!r} file")
    return state


@dataclass
class TrainingState:
    """Everything a checkpoint holds: the network, its EMA, the optimizer, the grad scaler, the generator that
    draws the batches, and the step, history and time reached."""

    network: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    plan_rng: torch.Generator
    step: int = 0
    history: list = field(default_factory=list)
    elapsed: float = 0.0

    @classmethod
    def start(cls, config: ShortcutConfig, settings: FitSettings, device: torch.device, amp_dtype, plan_seed: int
              ) -> "TrainingState":
        torch.manual_seed(settings.seed)
        network = build_shortcut(config).to(device)
        network.train()
        ema = copy.deepcopy(network).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        return cls(network, ema, optimizer, scaler, torch.Generator().manual_seed(plan_seed))

    def resume(self, path: Path, fingerprint: str, settings: FitSettings, config: ShortcutConfig,
               device: torch.device) -> None:
        """Continue from the checkpoint at ``path``; refuses one written for other data or other settings."""
        state = load_checkpoint(path)
        if state["fingerprint"] != fingerprint:
            raise ShortcutError(f"{path} was written for other data, another split or another setup "
                                "(its fingerprint differs); start without --resume or use the same arguments")
        changed = [k for k in RESULT_SETTINGS if state["settings"].get(k) != getattr(settings, k)]
        if changed:
            raise ShortcutError(f"{path} was trained with other settings ({', '.join(changed)}); resume "
                                "with the same values")
        if state["config"] != config.to_dict():
            raise ShortcutError(f"{path} holds another shortcut architecture: {state['config']}")
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.plan_rng.set_state(state["plan_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        self.step, self.history, self.elapsed = int(state["step"]), list(state["history"]), float(state["elapsed"])

    def checkpoint(self, done: int, plan_state: torch.Tensor, settings: FitSettings, config: ShortcutConfig,
                   fingerprint: str, elapsed: float, world: int, device: torch.device) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": 1, "step": done, "network": self.network.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "plan_rng": plan_state, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": self.history, "settings": asdict(settings), "config": config.to_dict(),
                "fingerprint": fingerprint, "elapsed": elapsed, "world": world}


# ------------------------------------------------------------------------------------------------------------
# the parts of one step


class BatchStream:
    """Training batches in order. The pairs of step s + 1 are drawn while step s trains (and, for memory-mapped
    data, read in a background thread). Offline, every rank draws the same global batch and keeps its slice
    ``rank::world``; online, each rank draws its own share from its own buffer."""

    def __init__(self, source, rng: torch.Generator, settings: FitSettings, dist: DistInfo, online: bool,
                 prefetch: bool):
        self.source, self.rng, self.dist, self.online = source, rng, dist, online
        self.rollout = settings.rollout
        self.size = settings.batch_size
        if online:
            self.size = settings.batch_size // dist.world + (1 if dist.rank < settings.batch_size % dist.world else 0)
        elif settings.batch_size < dist.world:
            raise ShortcutError(f"batch size {settings.batch_size} is smaller than the {dist.world} processes")
        use_thread = prefetch and not online and isinstance(source, TrajectorySamples)
        self.pool = ThreadPoolExecutor(max_workers=1) if use_thread else None
        self.pending = None

    def draw(self, step: int) -> torch.Tensor:
        """The pair indices of ``step`` for this rank (advances the generator)."""
        if self.online:
            self.source.ensure(step)
        n = len(self.source)
        if n < 1:
            raise ShortcutError("no (trajectory, step) pairs to train on: trajectories need more than "
                                f"{self.rollout} steps")
        which = torch.randint(0, n, (self.size,), generator=self.rng)
        return which if self.online else which[self.dist.rank::self.dist.world]

    def request(self, step: int) -> None:
        which = self.draw(step)
        self.pending = self.pool.submit(self.source.batch, which) if self.pool is not None else which

    def take(self, step: int, stop_at: int) -> tuple[dict, torch.Tensor]:
        """The batch of ``step``, and the generator state that draws step + 1 (what a checkpoint after ``step``
        keeps); requests the batch of step + 1 when there is one."""
        pending = self.pending
        batch = pending.result() if self.pool is not None else self.source.batch(pending)
        plan_state = self.rng.get_state()
        if step + 1 < stop_at:
            self.request(step + 1)
        return batch, plan_state

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def learning_rate(settings: FitSettings, step: int) -> float:
    return settings.lr * (0.1 if step >= settings.lr_drop_step else 1.0)


def optimizer_step(state: TrainingState, loss: torch.Tensor, grad_clip: float) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if grad_clip:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.network.parameters(), grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()


@torch.no_grad()
def update_ema(ema: nn.Module, network: nn.Module, ema_decay: float, step: int) -> None:
    """EMA with the usual warm-up: the decay is min(ema, (1 + step) / (10 + step))."""
    decay = min(ema_decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), network.parameters()):
        e.lerp_(p, 1 - decay)


class Journal:
    """The JSONL log (main rank): training loss, learning rate and samples/s every ``every`` steps, and every
    validation record."""

    def __init__(self, path: Optional[Path], every: int, batch_size: int, elapsed_before: float, started: float):
        self.file = open(path, "a") if path else None
        self.every, self.batch_size = every, batch_size
        self.elapsed_before, self.started = elapsed_before, started
        self.window_started, self.window_steps = time.time(), 0

    def seconds(self) -> float:
        return round(self.elapsed_before + time.time() - self.started, 1)

    def train_step(self, done: int, loss: float, lr: float) -> None:
        self.window_steps += 1
        if self.file is None or not self.every or done % self.every:
            return
        now = time.time()
        rate = round(self.window_steps * self.batch_size / max(now - self.window_started, 1e-9), 2)
        self._write({"kind": "train", "step": done, "train_loss": loss, "lr": lr, "samples_per_s": rate,
                     "seconds": self.seconds()})
        self.window_started, self.window_steps = now, 0

    def validation(self, record: dict) -> None:
        if self.file is not None:
            self._write({"kind": "val", **record})

    def _write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# ------------------------------------------------------------------------------------------------------------
# the loop


def train(generator: MaskedGenerator, config: ShortcutConfig, settings: FitSettings, train_source, val_source,
          contexts: BatchContexts, run: RunOptions, dist: DistInfo, log_path: Optional[Path], fingerprint: str,
          report_extra: dict, online: bool = False) -> tuple[nn.Module, dict]:
    """Fit a shortcut; returns its EMA weights and a report (settings, timing, held-out figures)."""
    device = generator.device
    amp_dtype = resolve_amp(settings.amp, device)
    state = TrainingState.start(config, settings, device, amp_dtype,
                                plan_seed=settings.seed + (7919 * dist.rank if online else 0))
    if run.resume and run.checkpoint is not None and Path(run.checkpoint).exists():
        state.resume(run.checkpoint, fingerprint, settings, config, device)
        if dist.main:
            log.info("resumed from %s at step %d", run.checkpoint, state.step)
    elif run.checkpoint is not None and Path(run.checkpoint).exists() and not run.resume and dist.main:
        log.warning("%s exists and will be overwritten (pass resume to continue it)", run.checkpoint)
    model = Chain(state.network)
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(model, device_ids=None,
                                                    find_unused_parameters=not config.cross_attention)
    start, total = state.step, settings.steps
    stop_at = min(total, run.max_steps) if run.max_steps else total
    batches = BatchStream(train_source, state.plan_rng, settings, dist, online, run.prefetch)
    started = time.time()
    journal = Journal(log_path if dist.main else None, run.log_every, settings.batch_size, state.elapsed, started)
    if start < stop_at:
        batches.request(start)
    bar = tqdm(total=total, initial=start, desc="fit shortcut", unit="step", disable=not (run.progress and dist.main))

    def held_out(done: int, loss_value: float, lr: float, seconds: float) -> dict:
        metrics = evaluate(generator, state.ema, val_source, limit=settings.val_limit, contexts=contexts, dist=dist,
                           split=not online)
        record = {"step": done, "train_loss": loss_value, "lr": lr, "seconds": seconds,
                  **{f"val_{k}": v for k, v in metrics.items()}}
        state.history.append(record)
        return record

    step, loss_value, stopped_early = start, float("nan"), False
    try:
        for step in range(start, stop_at):
            lr = learning_rate(settings, step)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            batch, plan_state = batches.take(step, stop_at)
            ctx = contexts(batch)
            inputs = rollout_inputs(generator, batch, ctx, settings.rollout)
            with autocast(device, amp_dtype):
                preds = model(batch["prev"], inputs.news, inputs.ratios, ctx.padding)
            local = loss_sums(generator, preds, inputs, ctx, settings)
            out_of_time = run.max_minutes is not None and (time.time() - started) / 60 >= run.max_minutes
            # global counts, global loss value and an agreed stop, in one collective
            total_sums = sum_over_ranks({**local, "stop": [torch.tensor(float(out_of_time), device=device)]},
                                        dist, device)
            loss, value = combine(local, total_sums, settings)
            if dist.enabled:
                loss = loss * dist.world  # DDP averages gradients over ranks; the loss is already a global mean
            loss_value = float(value)
            if not math.isfinite(loss_value):
                raise ShortcutError(nonfinite_message(batch, train_source, f"training step {step}", loss_value))
            optimizer_step(state, loss, settings.grad_clip)
            update_ema(state.ema, state.network, settings.ema, step)

            done = step + 1
            stopping = float(total_sums["stop"][0]) > 0 and done < total
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.4f}")
            journal.train_step(done, loss_value, lr)
            if done % settings.eval_every == 0 or done in (total, stop_at) or stopping:
                record = held_out(done, loss_value, lr, journal.seconds())
                if dist.main:
                    log.info("step %d: %s", done, record)
                journal.validation(record)
            if run.checkpoint is not None and dist.main and (
                    (run.checkpoint_every and done % run.checkpoint_every == 0) or done == stop_at or stopping):
                save_checkpoint(run.checkpoint, state.checkpoint(
                    done, plan_state, settings, config, fingerprint, state.elapsed + time.time() - started,
                    dist.world, device))
            if stopping:
                stopped_early = True
                break
    finally:
        bar.close()
        batches.close()
        journal.close()
    barrier(dist)
    steps_done = step + 1 if stop_at > start else start
    if not state.history:
        held_out(steps_done, loss_value, settings.lr, round(state.elapsed, 1))
    seconds = time.time() - started
    final = state.history[-1]
    report = {"settings": asdict(settings), **report_extra, "seconds": round(state.elapsed + seconds, 1),
              "steps_done": steps_done, "complete": steps_done >= total, "world_size": dist.world,
              "samples_per_second": round((steps_done - start) * settings.batch_size / max(seconds, 1e-9), 2),
              "stopped_early": stopped_early or steps_done < total,
              **{key: final[key] for key in ("val_mse", "val_baseline_mse", "val_agreement", "val_baseline_agreement")}}
    return state.ema, report
