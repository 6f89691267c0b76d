"""Progress bars that suit where they are written.

On a terminal (or in a notebook) a tqdm bar; anywhere else (a log file, a pipe, a grid worker's output) tqdm's
carriage-return redraws become one line each and flood the log, so a few plain lines are printed instead: one at
each tenth of the way and one at the end.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator


class PlainProgress:
    """The part of tqdm's interface the trainer, the evaluation and the data commands use, as plain lines."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | float | None = None, desc: str = "",
                 initial: int = 0, unit: str = "it", disable: bool = False, **_ignored: Any) -> None:
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start_n = total, initial, initial
        self.postfix = ""
        self.t0 = time.perf_counter()
        self.next_mark = self._mark_after(initial)
        self.closed = False

    def _mark_after(self, n: float) -> float:
        """The count at which the next line is due: the next tenth of the total (none without a total)."""
        if not self.total:
            return float("inf")
        step = max(self.total / 10, 1)
        return (n // step + 1) * step

    def __iter__(self) -> Iterator[Any]:
        for x in self.iterable or ():
            yield x
            self.update(1)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.n >= self.next_mark and (self.total is None or self.n < self.total):
            self._line()
            self.next_mark = self._mark_after(self.n)

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kw}.items())

    def _line(self) -> None:
        if self.disable:
            return
        done = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{pct}, {time.perf_counter() - self.t0:.0f} s{extra}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed and self.n > self.start_n:
            self._line()
        self.closed = True


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` where stderr (where bars go) redraws a bar in place, a terminal or a notebook;
    :class:`PlainProgress` with the same arguments elsewhere."""
    try:
        redraws = sys.stderr.isatty() or "ipykernel" in sys.modules
    except (AttributeError, ValueError):  # a closed or replaced stderr
        redraws = False
    if redraws:
        from tqdm.auto import tqdm
        return tqdm(iterable, **kwargs)
    return PlainProgress(iterable, **kwargs)
