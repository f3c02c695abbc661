"""One rich progress bar style for every long loop (training steps, attack batches, sweep cells)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class _Silent:
    """Progress's task interface, doing nothing: for non-primary ranks and quiet runs."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich Progress with count, rate field (`ips=`), elapsed time and ETA; a silent stand-in if disabled.

    Args:
        enabled: Show the bar.
    """
    if not enabled:
        yield _Silent()
        return
    columns = (TextColumn('[bold]{task.description}'), BarColumn(), MofNCompleteColumn(),
               TextColumn('{task.fields[ips]}'), TimeElapsedColumn(), TextColumn('ETA'), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        yield bar
