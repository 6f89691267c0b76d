"""Wall time and peak memory of a training phase, measured rather than inferred from parameter counts."""
from __future__ import annotations

import threading
import time
from typing import Any

import psutil
import torch


class PhaseMeter:
    """Context manager: wall and CPU time (a shared machine stretches only wall), peak RSS (sampled every ``interval``
    s; it includes the dataset and Python: compare within a process) and, on CUDA, peak allocated."""

    def __init__(self, name: str, device: torch.device | str = "cpu", interval: float = 0.05) -> None:
        self.name, self.device, self.interval = name, torch.device(device), interval
        self.result: dict[str, Any] = {}
        self._proc, self._stop = psutil.Process(), threading.Event()
        self._ended: tuple[float, float] | None = None  # (wall, CPU) seconds, once the phase has ended

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PhaseMeter":
        self._rss0 = self._peak = self._proc.memory_info().rss
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def elapsed(self) -> tuple[float, float]:
        """(wall, process CPU) seconds since the phase began; once it has ended, the phase's."""
        return self._ended or (time.perf_counter() - self._t0, time.process_time() - self._c0)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._ended = (time.perf_counter() - self._t0, time.process_time() - self._c0)
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.result = {"phase": self.name, "wall_s": self._ended[0], "cpu_s": self._ended[1],
                       "rss_start_mb": self._rss0 / 2**20, "rss_peak_mb": self._peak / 2**20}
        if self.device.type == "cuda":
            self.result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
