"""The paper's objective, and the held-out figures.

Loss: MSE on the next feature over the image positions still masked after step s (the official MaskGIT choice)
or over every position (official DiMOO choice; padding excluded), times ``mse_weight``, optionally plus a KL term
between the head's softmaxes of recorded and predicted features (temperature T, weighted T^2 as in distillation).
With ``rollout`` K the prediction is fed back K times with the recorded tokens (teacher forcing) and the K losses
are averaged. Sums are kept apart from their counts so that data parallel ranks can divide by global counts.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..generator import Context, MaskedGenerator, NewTokens, ShortcutError
from ..recording import recorded_condition
from .data import step_views
from .distributed import DistInfo, all_reduce, reduce_device
from .settings import FitSettings


class BatchContexts:
    """The Context for a batch of recorded rows. Generators whose ``head`` / ``new_tokens`` do not depend on the
    condition get a bare Context; the others (``per_row_context``) get each row's context rebuilt from its recorded
    condition and CFG branch (``prepare`` of that one image, cached per condition)."""

    def __init__(self, generator: MaskedGenerator, guidance: bool, cache_size: int = 4096):
        self.generator, self.guidance = generator, guidance
        self.cache: "OrderedDict[tuple, Context]" = OrderedDict()
        self.cache_size = cache_size

    def _prepared(self, info: dict) -> Context:
        negative = info.get("negative_prompt") or None
        key = (info.get("prompt"), negative, info.get("label"))
        ctx = self.cache.get(key)
        if ctx is None:
            ctx = self.generator.prepare(recorded_condition(info), 1, self.guidance)
            self.cache[key] = ctx
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        return ctx

    def __call__(self, batch: dict) -> Context:
        prev = batch["prev"]
        rows, device = prev.shape[0], prev.device
        if not self.generator.per_row_context:
            return Context(batch_size=rows, branches=1, device=device)
        infos = batch.get("infos")
        if infos is None:
            raise ShortcutError(f"generator {self.generator.identity!r} needs the recorded condition of every row; "
                                "this batch source does not carry them")
        ctx = Context.from_rows([(self._prepared(info), int(info["branch"])) for info in infos], prev.shape[1],
                                device)
        if ctx.padding is not None:  # positions past a row's own length hold whatever the recording batch had
            keep = (~ctx.padding)[..., None].to(prev.dtype)
            batch["prev"] = prev * keep
            batch["target"] = batch["target"] * keep
            if "targets" in batch:
                batch["targets"] = batch["targets"] * keep[:, None]
        return ctx


def loss_weights(generator: MaskedGenerator, ctx: Context, positions: str, still_masked: torch.Tensor,
                 length: int) -> torch.Tensor:
    """[R, T] weights of the feature positions the loss covers (never padding)."""
    rows, device = still_masked.shape[0], still_masked.device
    if positions == "all":
        weights = torch.ones(rows, length, device=device)
        if ctx.padding is not None:
            weights = weights * (~ctx.padding).float()
        return weights
    weights = torch.zeros(rows, length, device=device)
    index = generator.image_positions(ctx)
    if bool((index == index[:1]).all()):
        weights[:, index[0]] = still_masked.float()
    else:
        weights.scatter_(1, index, still_masked.float())
    return weights


def nonfinite_message(batch: dict, source, when: str, loss: float) -> str:
    """Why a loss is not finite: NaN or inf in the recorded features of the batch (naming the shard and step),
    or else a divergence."""
    for key in ("prev", "target", "targets"):
        value = batch.get(key)
        if value is None or "pairs" not in batch:
            continue
        bad = ~torch.isfinite(value.flatten(1)).all(dim=1)
        if bool(bad.any()):
            where = source.describe(int(batch["pairs"][int(bad.nonzero()[0])]))
            return (f"{when}: the recorded features of {where} hold NaN or infinite values (damaged data, not a "
                    "divergence): delete that shard and rerun the recorder to record it again")
    return f"{when}: training diverged (loss {loss}); lower --lr"


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_position = (pred.float() - target).pow(2).mean(dim=-1)
    return (per_position * weights).sum() / weights.sum().clamp(min=1)


def _head(generator: MaskedGenerator, feature: torch.Tensor, ctx: Context, masked: torch.Tensor) -> torch.Tensor:
    return generator.head(feature.to(generator.dtype), ctx, masked).float()


def _kl(generator, pred, target, ctx, still, temperature) -> torch.Tensor:
    """KL(softmax(head(target)/T) || softmax(head(pred)/T)) per image position [R, L]."""
    with torch.no_grad():
        teacher = torch.log_softmax(_head(generator, target, ctx, still) / temperature, dim=-1)
    student = torch.log_softmax(_head(generator, pred, ctx, still) / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1)


class Chain(nn.Module):
    """The network applied ``len(news)`` times, each prediction feeding the next call (teacher-forced rollout).
    One module call per training step, so DistributedDataParallel sees a single forward."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, prev: torch.Tensor, news: list, ratios: list, padding: Optional[torch.Tensor]) -> list:
        preds, feature = [], prev
        for new, ratio in zip(news, ratios):
            feature = self.network(feature, new, ratio, padding)
            preds.append(feature)
        return preds


@dataclass
class Rollout:
    """Per rollout step k: the new tokens and masked fraction fed to the network, the positions still masked
    after it and the recorded feature it must predict."""

    news: list[NewTokens]
    ratios: list[torch.Tensor]
    stills: list[torch.Tensor]
    targets: list[torch.Tensor]


@torch.no_grad()
def rollout_inputs(generator: MaskedGenerator, batch: dict, ctx: Context, rollout: int) -> Rollout:
    steps = Rollout([], [], [], [])
    for k in range(rollout):
        if k == 0:
            new_map, still, ratio = batch["new_map"], batch["still_masked"], batch["mask_ratio"]
            target = batch["target"]
        else:
            new_map, still, ratio = step_views(batch["order"], batch["step"] + k)
            target = batch["targets"][:, k]
        steps.news.append(generator.new_tokens(batch["codes"], new_map, ctx))
        steps.ratios.append(ratio)
        steps.stills.append(still)
        steps.targets.append(target)
    return steps


def loss_sums(generator: MaskedGenerator, preds: list[torch.Tensor], steps: Rollout, ctx: Context,
              settings: FitSettings) -> dict[str, list[torch.Tensor]]:
    """This rank's loss numerators (differentiable) and counts per rollout step: ``mse`` over ``positions``,
    ``kl`` over ``kl_positions`` (empty lists without the KL term)."""
    sums = {"mse": [], "positions": [], "kl": [], "kl_positions": []}
    length = preds[0].shape[1]
    for pred, still, target in zip(preds, steps.stills, steps.targets):
        weights = loss_weights(generator, ctx, settings.loss_positions, still, length)
        per_position = (pred.float() - target).pow(2).mean(dim=-1)
        sums["mse"].append((per_position * weights).sum())
        sums["positions"].append(weights.sum())
        if settings.kl_weight:
            kl = _kl(generator, pred.float(), target, ctx, still, settings.kl_temperature)
            sums["kl"].append((kl * still.float()).sum())
            sums["kl_positions"].append(still.float().sum())
    return sums


def combine(local: dict[str, list[torch.Tensor]], total: dict[str, list[torch.Tensor]],
            settings: FitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate: this rank's sums over the global counts, its value over all ranks)."""
    loss = value = None
    kl_scale = settings.kl_weight * settings.kl_temperature ** 2
    for k in range(settings.rollout):
        positions = total["positions"][k].clamp(min=1)
        term, value_term = local["mse"][k] / positions, total["mse"][k] / positions
        if settings.mse_weight != 1.0:
            term, value_term = term * settings.mse_weight, value_term * settings.mse_weight
        if settings.kl_weight:
            kl_positions = total["kl_positions"][k].clamp(min=1)
            term = term + kl_scale * local["kl"][k] / kl_positions
            value_term = value_term + kl_scale * total["kl"][k] / kl_positions
        loss = term if k == 0 else loss + term
        value = value_term if k == 0 else value + value_term
    if settings.rollout > 1:
        loss, value = loss / settings.rollout, value / settings.rollout
    return loss, value


@torch.no_grad()
def evaluate(generator: MaskedGenerator, network: torch.nn.Module, samples, batch_size: int = 64,
             limit: Optional[int] = None, contexts: Optional[BatchContexts] = None,
             dist: Optional[DistInfo] = None, split: bool = True) -> dict:
    """Held-out MSE and token agreement (head argmax of predicted vs recorded feature on still-masked
    positions), for the shortcut and for the 'reuse the last feature' baseline. Under torchrun the ranks share
    the work (``split``) or each evaluates its own samples; the totals are summed over ranks."""
    dist = dist or DistInfo()
    contexts = contexts or BatchContexts(generator, guidance=True)
    was_training = network.training
    network.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # mse, baseline_mse, agreement, baseline_agreement, weight
    count = len(samples) if limit is None else min(limit, len(samples))
    starts = list(range(0, count, batch_size))
    if split:
        starts = starts[dist.rank::dist.world]
    for start in starts:
        which = torch.arange(start, min(start + batch_size, count))
        batch = samples.batch(which)
        ctx = contexts(batch)
        new = generator.new_tokens(batch["codes"], batch["new_map"], ctx)
        pred = network(batch["prev"], new, batch["mask_ratio"], ctx.padding)
        still = batch["still_masked"]
        weights = loss_weights(generator, ctx, "masked", still, batch["prev"].shape[1])
        n = float(weights.sum())
        mse = float(masked_mse(pred, batch["target"], weights))
        if not math.isfinite(mse):
            raise ShortcutError(nonfinite_message(batch, samples, "validation", mse))
        totals[0] += mse * n
        totals[1] += float(masked_mse(batch["prev"], batch["target"], weights)) * n
        target_tokens = _head(generator, batch["target"], ctx, still).argmax(-1)
        for slot, feature in ((2, pred), (3, batch["prev"])):
            agree = (_head(generator, feature, ctx, still).argmax(-1) == target_tokens).float()
            totals[slot] += float((agree * still).sum())
        totals[4] += n
    if dist.enabled:
        totals = all_reduce(totals.to(reduce_device(generator.device)), dist).cpu()
    if was_training:
        network.train()
    weight = max(float(totals[4]), 1)
    return {"mse": float(totals[0]) / weight, "baseline_mse": float(totals[1]) / weight,
            "agreement": float(totals[2]) / weight, "baseline_agreement": float(totals[3]) / weight}
