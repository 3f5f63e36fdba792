"""The choice of executor by name, above every executor (the cluster ones are imported only when chosen)."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .executors import Executor, LocalExecutor


def make_executor(name: str, **options: Any) -> Executor:
    """The executor ``name`` (local, ray, slurm) with its options."""
    if name == "local":
        unknown = sorted(set(options) - {"cpus_per_run"})
        if unknown:
            raise UserError(f"--executor local takes no cluster options (got {', '.join(unknown)})")
        return LocalExecutor(**options)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(**options)
    if name == "slurm":
        from .slurm_executor import SlurmExecutor

        return SlurmExecutor(**options)
    raise UserError(f"unknown executor {name!r}: choose from local, ray, slurm")
