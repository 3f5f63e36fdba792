"""Peak memory of a piece of work: CUDA's allocator peak on GPU, the process's resident high-water mark on CPU."""

from __future__ import annotations

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def resident_high_water_mb() -> float | None:
    """The process's peak resident set size so far (Linux ``VmHWM``), in MiB; None where unavailable."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_resident_high_water() -> bool:
    """Reset ``VmHWM`` to the current resident size (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: ``peak_mb`` is the peak during the block (CUDA allocated bytes, or process RSS on CPU),
    ``base_mb`` the level at its start and ``added_mb`` the growth, ``peak_mb - base_mb``.

    On CPU the values are the whole process's resident memory, model and data included; they are None where the
    high-water mark cannot be reset (then it would describe earlier work too).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.base_mb: float | None = None
        self.peak_mb: float | None = None

    @property
    def added_mb(self) -> float | None:
        return None if self.base_mb is None or self.peak_mb is None else self.peak_mb - self.base_mb

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2**20
        elif reset_resident_high_water():
            self.base_mb = resident_high_water_mb()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.base_mb is not None:
            self.peak_mb = resident_high_water_mb()
        return False
