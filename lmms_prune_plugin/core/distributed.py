"""Several processes (``torchrun``): the process group, summing statistics, the main rank."""

from __future__ import annotations

import os

import torch

from lmms_prune_plugin.core.stats import LayerStatistics


def process_group() -> tuple[int, int]:
    """(rank, world size). Under torchrun the wrappers have not joined a group yet at load
    time, so one is started here (gloo on CPU, nccl on GPU); the evaluator then reuses it."""
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if (
        dist.is_available()
        and not dist.is_initialized()
        and world > 1
        and os.environ.get("MASTER_ADDR")
    ):
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0, and when there is no process group at all."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce(stats: LayerStatistics) -> LayerStatistics:
    """Sum statistics over ranks so that every process derives the identical plan."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    flat = torch.tensor(stats.flatten(), dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return stats.unflatten(flat.cpu().tolist())
