"""Where this process stands in a torchrun job, read once from one place (no torch import, so the
CLI can ask cheaply)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistributedContext:
    """torchrun's RANK, LOCAL_RANK and WORLD_SIZE; (0, 0, 1) outside torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def distributed_context() -> DistributedContext:
    """This process's place in the job, from torchrun's environment variables."""
    env = os.environ
    return DistributedContext(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def unwrap(model: Any) -> Any:
    """The network inside a DistributedDataParallel wrapper (the model itself when not wrapped)."""
    return getattr(model, "module", model)
