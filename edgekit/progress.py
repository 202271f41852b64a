"""Progress on stderr for long steps: a line when a stage starts and ends, a bar for loops over data.

One switch for the whole process: :func:`set_quiet` (the CLI's ``--quiet``)
silences everything; ``--json`` output is unaffected because nothing here
writes to stdout. Bars are drawn (tqdm) only when stderr is a terminal; when
it is not (CI logs, pipes) a loop prints one line when it ends instead, so a
log never fills with carriage returns, and a line every ``EDGEKIT_PROGRESS_EVERY``
seconds (60) while it runs (done / total, elapsed, time left), so a long loop
is never minutes of silence. Library callers get the same output;
``set_quiet(True)`` turns it off for embedding.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_state = {"quiet": os.environ.get("EDGEKIT_QUIET", "") not in ("", "0"), "depth": 0}


def every() -> float:
    """Seconds between heartbeat lines off a terminal (EDGEKIT_PROGRESS_EVERY, 60; 0 = none)."""
    try:
        return max(float(os.environ.get("EDGEKIT_PROGRESS_EVERY", "60")), 0.0)
    except ValueError:
        return 60.0


class _Heartbeat:
    """Off a terminal: ``desc: 120/400 its, 4.1 min, about 9.6 min left`` once per ``every()`` seconds."""

    def __init__(self, desc: str, total: int | None, unit: str):
        self.desc, self.total, self.unit = desc or "loop", total, unit
        self.started = self.last = time.perf_counter()
        self.every = every()

    def beat(self, count: int) -> None:
        now = time.perf_counter()
        if not self.every or now - self.last < self.every or _state["quiet"]:
            return
        self.last = now
        elapsed = now - self.started
        done = f"{count}/{self.total}" if self.total else str(count)
        left = ""
        if self.total and 0 < count < self.total:
            left = f", about {_minutes(elapsed * (self.total - count) / count)} left"
        echo(f"           {self.desc}: {done} {_plural(self.unit, count)}, {_minutes(elapsed)}{left}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def set_quiet(quiet: bool = True) -> None:
    """Silence (True) or restore (False) every stage line and bar of this process."""
    _state["quiet"] = bool(quiet)


def quiet() -> bool:
    return _state["quiet"]


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def echo(line: str) -> None:
    """One line on stderr (nothing when quiet)."""
    if not _state["quiet"]:
        indent = "  " * max(0, _state["depth"] - 1)
        print(f"{indent}{line}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str, detail: str = "") -> Iterator[dict]:
    """``[edgekit] name: detail ...`` when it starts, ``[edgekit] name done in 12.3 s`` when it ends.

    Yields a dict: a ``note`` put in it is appended to the end line. A stage
    that raises prints ``failed after ...`` (the error itself is the caller's
    to report).
    """
    info: dict = {}
    _state["depth"] += 1
    echo(f"[edgekit] {name}{': ' + detail if detail else ''} ...")
    started = time.perf_counter()
    try:
        yield info
    except BaseException:
        echo(f"[edgekit] {name} failed after {time.perf_counter() - started:.1f} s")
        raise
    else:
        note = f" ({info['note']})" if info.get("note") else ""
        echo(f"[edgekit] {name} done in {time.perf_counter() - started:.1f} s{note}")
    finally:
        _state["depth"] -= 1


@contextmanager
def slow_stage(name: str, detail: str = "", after: float = 1.0) -> Iterator[None]:
    """Like :func:`stage`, but silent unless it runs longer than ``after`` seconds.

    For the checks at the start of a command: bad input fails in well under a
    second and its error stays the only line; a slow load still says what it is
    doing (its start line appears after ``after`` s, its end line when done).
    """
    import threading

    started = time.perf_counter()
    shown = threading.Event()

    def announce() -> None:
        shown.set()
        echo(f"[edgekit] {name}{': ' + detail if detail else ''} ...")

    timer = threading.Timer(after, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    except BaseException:
        timer.cancel()
        if shown.is_set():
            echo(f"[edgekit] {name} failed after {time.perf_counter() - started:.1f} s")
        raise
    timer.cancel()
    if shown.is_set():
        echo(f"[edgekit] {name} done in {time.perf_counter() - started:.1f} s")


def _plural(unit: str, count: int) -> str:
    if count == 1 or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def bar(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Iterate ``items`` with a progress bar on a terminal, one summary line otherwise, nothing when quiet."""
    if _state["quiet"]:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if _tty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            yield from tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                            dynamic_ncols=True, mininterval=0.25)
            return
    started, count = time.perf_counter(), 0
    heart = _Heartbeat(desc, total, unit)
    for item in items:
        yield item
        count += 1
        heart.beat(count)
    if total is None or total >= 8:  # a loop of a handful of items needs no line of its own
        echo(f"           {desc or 'loop'}: {count} {_plural(unit, count)} in {time.perf_counter() - started:.1f} s")


class Counter:
    """A manual bar for loops that do not iterate a sequence (``update(n)``); same rules as :func:`bar`."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it"):
        self.total, self.desc, self.unit, self.count = total, desc, unit, 0
        self._started = time.perf_counter()
        self._heart = _Heartbeat(desc, total, unit)
        self._bar = None
        if not _state["quiet"] and _tty():
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                                 dynamic_ncols=True, mininterval=0.25)
            except ImportError:
                self._bar = None

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
        else:
            self._heart.beat(self.count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not _state["quiet"] and (self.total is None or self.total >= 8):
            echo(f"           {self.desc or 'loop'}: {self.count} {_plural(self.unit, self.count)} in "
                 f"{time.perf_counter() - self._started:.1f} s")

    def __enter__(self) -> "Counter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
