"""Progress of long work, on stderr: rich bars on a terminal, plain lines in a log, rows fed by worker processes.

Long loops (training steps, attack batches, the evaluation's stages) report through `progress_bar()`, which
yields an object with the part of rich's `Progress` interface they use (`add_task`, `update`, `advance`):

- on a terminal, a rich bar per task (count, rate field `ips=`, elapsed time, ETA);
- elsewhere (a log file, a pipe), one plain line when a task starts, one a minute while it runs (also while
  one long step, such as AutoAttack on a batch, gives no update), and one when it ends;
- inside a run of `RunBoard` (a grid cell or a quickstart model, in a worker process or in this one), events
  that the board shows as that run's row: which stage, how far, its ETA.

Progress is only ever shown: nothing here changes a result.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO

Event = tuple  # ('start', run) | ('task', run, task_id, description, total, completed) |
# ('update', run, task_id, completed, info) | ('end', run)
Sink = Callable[[Event], None]

PLAIN_EVERY_S = 60.0  # a plain line per running task at most this often
SEND_EVERY_S = 0.25  # a worker sends a task's progress at most this often (and always when it completes)

_SINK: Optional[Sink] = None  # where this process's progress goes while it runs one of a board's runs
_RUN: Optional[str] = None


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Silent:
    """Progress's task interface, doing nothing: for non-primary ranks and quiet runs."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Tasks:
    """The task bookkeeping of rich's interface; subclasses say what to do when a task starts or moves."""

    def __init__(self) -> None:
        self.tasks: Dict[int, Dict[str, Any]] = {}

    def add_task(self, description: str, total: Optional[float] = None, completed: float = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = dict(description=description, total=total, completed=completed, fields=fields,
                                   start=time.perf_counter(), sent=0.0)
        self.started(task_id)
        return task_id

    def update(self, task_id: int, *, advance: Optional[float] = None, completed: Optional[float] = None,
               total: Optional[float] = None, description: Optional[str] = None, **fields: Any) -> None:
        t = self.tasks[task_id]
        if total is not None:
            t['total'] = total
        if description is not None:
            t['description'] = description
        if completed is not None:
            t['completed'] = completed
        if advance is not None:
            t['completed'] += advance
        t['fields'].update(fields)
        self.moved(task_id)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def done(self, task_id: int) -> bool:
        t = self.tasks[task_id]
        return t['total'] is not None and t['completed'] >= t['total']

    def started(self, task_id: int) -> None:
        raise NotImplementedError

    def moved(self, task_id: int) -> None:
        raise NotImplementedError


def _count(t: Dict[str, Any]) -> str:
    return f'{t["completed"]:.0f}/{t["total"]:.0f}' if t['total'] is not None else f'{t["completed"]:.0f}'


def eta_seconds(elapsed: float, completed: float, total: Optional[float]) -> Optional[float]:
    """Seconds left at the pace so far (None before the first step, or without a total)."""
    if not total or completed <= 0:
        return None
    return max(0.0, elapsed * (total - completed) / completed)


def fmt_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return '?'
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}' if seconds >= 3600 else \
        f'{seconds // 60}:{seconds % 60:02d}'


class _Plain(_Tasks):
    """Plain lines for logs: a task's start, a line a minute while it runs (`heartbeat`), and its end."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lock = threading.Lock()  # the heartbeat's thread writes too: one whole line at a time

    def _line(self, task_id: int) -> None:
        with self._lock:
            self._write(task_id)

    def _write(self, task_id: int) -> None:
        t = self.tasks[task_id]
        elapsed = time.perf_counter() - t['start']
        info = t['fields'].get('ips') or ''
        when = (f'in {fmt_seconds(elapsed)}' if self.done(task_id) else
                f'{fmt_seconds(elapsed)} elapsed, ETA {fmt_seconds(eta_seconds(elapsed, t["completed"], t["total"]))}')
        print(f'{t["description"]}: {_count(t)} {info} ({when})'.replace('  ', ' '), file=self.stream, flush=True)
        t['sent'] = time.perf_counter()

    def started(self, task_id: int) -> None:
        self._line(task_id)

    def moved(self, task_id: int) -> None:
        t = self.tasks[task_id]
        if self.done(task_id) and not t.get('ended'):
            t['ended'] = True
            self._line(task_id)
        elif time.perf_counter() - t['sent'] >= PLAIN_EVERY_S:
            self._line(task_id)

    def heartbeat(self) -> None:
        """The line of the task at work (the newest one not done) if it has said nothing for PLAIN_EVERY_S: a
        step that takes minutes (AutoAttack on one batch) would otherwise leave the log silent that long."""
        running = [i for i in list(self.tasks) if not self.done(i)]
        if running and time.perf_counter() - self.tasks[running[-1]]['sent'] >= PLAIN_EVERY_S:
            self.moved(running[-1])


@contextlib.contextmanager
def _beating(plain: _Plain) -> Iterator[_Plain]:
    """`plain`, with a thread that calls its heartbeat while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(PLAIN_EVERY_S / 4, 5.0)):
            plain.heartbeat()
    thread = threading.Thread(target=beat, name='progress-heartbeat', daemon=True)
    thread.start()
    try:
        yield plain
    finally:
        stop.set()
        thread.join()


class _ToSink(_Tasks):
    """A run's tasks as events for its board (`RunBoard`), at most a few a second."""

    def __init__(self, sink: Sink, run: str) -> None:
        super().__init__()
        self.sink, self.run = sink, run

    def started(self, task_id: int) -> None:
        t = self.tasks[task_id]
        self.sink(('task', self.run, task_id, t['description'], t['total'], t['completed']))
        t['sent'] = time.perf_counter()

    def moved(self, task_id: int) -> None:
        t = self.tasks[task_id]
        now = time.perf_counter()
        if self.done(task_id) or now - t['sent'] >= SEND_EVERY_S:
            self.sink(('update', self.run, task_id, t['completed'], str(t['fields'].get('ips') or '')))
            t['sent'] = now


def _rich_progress(console: Any, *extra: Any, **kwargs: Any) -> Any:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class Eta(TimeRemainingColumn):
        """rich's estimate from the task's recent pace, or the task's own `eta` field where it has one."""

        def render(self, task: Any) -> Any:
            eta = task.fields.get('eta')
            return Text(eta, style='progress.remaining') if eta else super().render(task)

    columns = (TextColumn('[bold]{task.description}'), *extra, BarColumn(), MofNCompleteColumn(),
               TextColumn('{task.fields[ips]}'), TimeElapsedColumn(), TextColumn('ETA'), Eta())
    return Progress(*columns, console=console, **kwargs)


@contextlib.contextmanager
def progress_bar(enabled: bool = True, stream: Optional[TextIO] = None) -> Iterator[Any]:
    """Report the tasks of a long loop (rich's `add_task` / `update` / `advance`), as the module says.

    Args:
        enabled: Show progress on this process's stderr. Inside a board's run the progress goes to the board
            whatever this says (the board owns the terminal; a worker has none of its own).
        stream: Where to write (default: sys.stderr).
    """
    if _SINK is not None:
        yield _ToSink(_SINK, _RUN or '')
        return
    if not enabled:
        yield _Silent()
        return
    stream = stream or sys.stderr
    if not is_terminal(stream):
        with _beating(_Plain(stream)) as plain:
            yield plain
        return
    from rich.console import Console
    with _rich_progress(Console(file=stream), transient=False) as bar:
        yield bar


def stage(bar: Any, description: str, total: float) -> Callable[..., None]:
    """Add one task to `bar` and return its step function: `step(n=1, **fields)` advances it by n.

    With `bar` None the step function does nothing (a caller that shows no progress).
    """
    if bar is None:
        return lambda n=1, **fields: None
    task = bar.add_task(description, total=total, ips='')

    def step(n: float = 1, **fields: Any) -> None:
        bar.update(task, advance=n, **fields)
    return step


@contextlib.contextmanager
def reporting_to(sink: Optional[Sink], run: str) -> Iterator[None]:
    """Within the block, `progress_bar()` reports to `sink` as run `run` (None: as usual)."""
    global _SINK, _RUN
    before = _SINK, _RUN
    _SINK, _RUN = sink, run
    try:
        if sink is not None:
            sink(('start', run))
        yield
        if sink is not None:
            sink(('end', run))
    finally:
        _SINK, _RUN = before


class RunBoard:
    """Shows many runs (grid cells, quickstart models), each run's current stage, and the whole with an ETA.

    Feed it the events of `progress_bar()` inside `reporting_to(board.handle, run)`, in this process or, through
    a queue, from worker processes (`bench.core.parallel.run_parallel`). On a terminal it is a live rich table
    on stderr (a row per running run: stage, step/total, elapsed, ETA; and an overall bar over the runs);
    elsewhere, plain lines: each stage's start and end, and each finished run with the overall ETA.

    Args:
        title: What the runs are ('quickstart', 'grid').
        runs: Every run's name, in order.
        procs: How many run at once (for the overall ETA).
        stream: Where to write (default: sys.stderr).
        enabled: False shows nothing.
    """

    def __init__(self, title: str, runs: Sequence[str], procs: int = 1, stream: Optional[TextIO] = None,
                 enabled: bool = True) -> None:
        self.title, self.runs, self.procs = title, list(runs), max(1, procs)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and is_terminal(self.stream)
        self.t0 = time.perf_counter()
        self.finished: List[str] = []
        self.current: Dict[str, Dict[str, Any]] = {}  # run -> its latest task
        self._progress: Any = None
        self._rows: Dict[str, int] = {}
        self._overall: Optional[int] = None

    def __enter__(self) -> 'RunBoard':
        if self.live:
            from rich.console import Console
            from rich.progress import TextColumn
            self._progress = _rich_progress(Console(file=self.stream), TextColumn('{task.fields[stage]}'),
                                            transient=False, refresh_per_second=4)
            self._progress.__enter__()
            self._overall = self._progress.add_task(f'{self.title}: runs done', total=len(self.runs), ips='',
                                                    stage='')
        elif self.enabled:
            self._say(f'{self.title}: {len(self.runs)} runs, {self.procs} at a time')
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def overall_eta(self) -> Optional[float]:
        """Seconds left: the wall time per finished run so far, times the runs left."""
        done = len(self.finished)  # the wall time so far already ran `procs` runs at a time
        return (time.perf_counter() - self.t0) * (len(self.runs) - done) / done if done else None

    def handle(self, event: Event) -> None:
        """Show one event of a run (see `Event`)."""
        if not self.enabled:
            return
        kind, run = event[0], event[1]
        if kind == 'start':
            if self.live:
                self._rows[run] = self._progress.add_task(run, total=None, ips='', stage='starting')
            else:
                self._say(f'{self.title}: {run}: started')
        elif kind == 'task':
            _, _, task_id, description, total, completed = event
            self.current[run] = dict(task_id=task_id, description=description, total=total, completed=completed,
                                     start=time.perf_counter(), said=time.perf_counter())
            if self.live:
                self._progress.reset(self._rows[run], total=total, completed=completed, stage=description, ips='')
            else:
                self._say(f'{self.title}: {run}: {description} ({_count(self.current[run])})')
        elif kind == 'update':
            _, _, task_id, completed, info = event
            t = self.current.get(run)
            if t is None or t['task_id'] != task_id:
                return  # a stage that is no longer the run's current one
            t['completed'] = completed
            if self.live:
                self._progress.update(self._rows[run], completed=completed, ips=info)
            elif time.perf_counter() - t['said'] >= PLAIN_EVERY_S:
                elapsed = time.perf_counter() - t['start']
                self._say(f'{self.title}: {run}: {t["description"]} {_count(t)} ({fmt_seconds(elapsed)} elapsed, '
                          f'ETA {fmt_seconds(eta_seconds(elapsed, completed, t["total"]))})')
                t['said'] = time.perf_counter()
        elif kind == 'end':
            self.finished.append(run)
            eta = fmt_seconds(self.overall_eta()) if len(self.finished) < len(self.runs) else '0:00'
            if self.live:
                self._progress.remove_task(self._rows.pop(run))
                self._progress.update(self._overall, completed=len(self.finished), eta=f'~{eta}')
                self._progress.console.print(f'{self.title}: {run}: done in '
                                             f'{fmt_seconds(time.perf_counter() - self.t0)} since start')
            else:
                self._say(f'{self.title}: {run}: done ({len(self.finished)}/{len(self.runs)} runs, '
                          f'{fmt_seconds(time.perf_counter() - self.t0)} elapsed, ETA ~{eta})')
