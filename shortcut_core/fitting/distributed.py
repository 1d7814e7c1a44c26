"""Data parallel fitting under torchrun: the rank layout, the process group, and the one collective per step.

Every rank draws the same global batch and takes its slice ``rank::world``; the loss is normalised by global
counts, so K processes compute the gradient of one process over the same global batch. nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (torchrun) and start the process group: nccl on CUDA, gloo on CPU.
    Returns the rank info and the device this rank uses (cuda:LOCAL_RANK when CUDA is chosen)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    info = DistInfo(rank=rank, world=world, local_rank=local)
    if world > 1:
        import torch.distributed as dist
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=60))
    return info, dev


def reduce_device(device: torch.device) -> torch.device:
    """Where collective tensors live: ``device`` (the GPU) for nccl, the CPU for gloo."""
    try:
        import torch.distributed as dist
        if dist.is_initialized() and dist.get_backend() == "nccl":
            return device
    except (ImportError, RuntimeError):
        pass
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum over ranks (in place); the tensor itself on one process."""
    if info.enabled:
        import torch.distributed as dist
        dist.all_reduce(tensor)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


def sum_over_ranks(values: dict[str, list[torch.Tensor]], info: DistInfo, device: torch.device
                   ) -> dict[str, list[torch.Tensor]]:
    """Named lists of scalars summed over ranks in ONE collective (packed, then unpacked by name), detached.
    On one process: the values themselves, detached."""
    if not info.enabled:
        return {name: [v.detach() for v in items] for name, items in values.items()}
    names = list(values)
    packed = torch.stack([v.detach().float() for name in names for v in values[name]]).to(reduce_device(device))
    packed = all_reduce(packed, info).to(device)
    out, start = {}, 0
    for name in names:
        out[name] = list(packed[start:start + len(values[name])])
        start += len(values[name])
    return out
