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
    """Context manager: ``peak_mb`` is the peak during the block (CUDA allocated bytes, or process RSS on CPU).

    On CPU the value is the whole process's peak resident memory while the block ran, model and data included;
    it is None where the peak cannot be reset (then it would describe earlier work too).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self._resettable = False

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._resettable = reset_resident_high_water()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._resettable:
            self.peak_mb = resident_high_water_mb()
        return False
