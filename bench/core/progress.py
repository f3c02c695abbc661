"""Progress of long work, on stderr: rich's progress bars on a terminal, plain lines in a log, and one board for
runs in worker processes.

Long loops (training steps, attack batches, the evaluation's stages) report through `progress_bar()`, which
yields a `rich.progress.Progress`: rich keeps the tasks (count, rate field `ips=`, elapsed time, ETA) and draws
them on a terminal. What rich lacks is added here:

- a log (a file, a pipe), where rich draws nothing until the end: one plain line when a task starts, one a
  minute while it runs (also while one long step, such as AutoAttack on a batch, gives no update), and one when
  it ends, without a control sequence;
- runs in other processes: inside a run of `RunBoard` (a grid cell or a quickstart model, in a worker process or
  in this one), a task's start and moves become events (`Event`, through a queue from a worker) that the board
  shows as that run's row: which stage, how far, its ETA.

Progress is only ever shown: nothing here changes a result.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, Task, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

Event = tuple  # ('start', run) | ('task', run, task_id, description, total, completed) |
# ('update', run, task_id, completed, info) | ('end', run, outcome)
Sink = Callable[[Event], None]

PLAIN_EVERY_S = 60.0  # a plain line per running task at most this often
SEND_EVERY_S = 0.25  # a worker sends a task's progress at most this often (and always when it completes)

_SINK: Optional[Sink] = None  # where this process's progress goes while it runs one of a board's runs
_RUN: Optional[str] = None
_OUTCOME: Optional[str] = None  # how the current run ended, when not plainly 'done' (`report_outcome`)


def is_terminal(stream: TextIO) -> bool:
    # the stream itself, not rich's guess (FORCE_COLOR would make it draw bars, control sequences, into a log)
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _count(task: Task) -> str:
    return f'{task.completed:.0f}/{task.total:.0f}' if task.total is not None else f'{task.completed:.0f}'


def _done(task: Task) -> bool:
    return task.total is not None and task.completed >= task.total


def _clock(seconds: Optional[float]) -> str:
    """H:MM:SS, as rich's time columns show it; '?' for no estimate."""
    return '?' if seconds is None else str(timedelta(seconds=round(seconds)))


class _Watched(Progress):
    """rich's Progress, which also tells `moved(task, started)` of each task's start and move."""

    def add_task(self, description: str, start: bool = True, total: Optional[float] = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start, total, completed, visible, **fields)
        self.moved(self.task(task_id), started=True)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self.moved(self.task(task_id), started=False)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def task(self, task_id: TaskID) -> Task:
        return next(t for t in self.tasks if t.id == task_id)

    def moved(self, task: Task, started: bool) -> None:
        raise NotImplementedError


class _Log(_Watched):
    """A log's progress: a task's start, a line a minute while it runs (from a thread, while the block runs), and
    its end."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(disable=True)  # rich keeps the tasks; the lines are this class's
        self.stream = stream
        self.said: Dict[TaskID, float] = {}
        self.ended: set = set()
        self.writing = threading.Lock()  # the heartbeat's thread writes too: one whole line at a time
        self.stopping = threading.Event()
        self.beat = threading.Thread(target=self._beat, name='progress-heartbeat', daemon=True)

    def _say(self, task: Task) -> None:
        with self.writing:
            when = f'in {_clock(task.finished_time or task.elapsed)}' if _done(task) else \
                f'{_clock(task.elapsed)} elapsed, ETA {_clock(task.time_remaining)}'
            info = task.fields.get('ips') or ''
            print(f'{task.description}: {_count(task)} {info} ({when})'.replace('  ', ' '), file=self.stream,
                  flush=True)
            self.said[task.id] = time.perf_counter()

    def moved(self, task: Task, started: bool) -> None:
        if _done(task) and not started:
            if task.id not in self.ended:
                self.ended.add(task.id)
                self._say(task)
        elif started or time.perf_counter() - self.said[task.id] >= PLAIN_EVERY_S:
            self._say(task)

    def _beat(self) -> None:
        """The line of the task at work (the newest one not done) if it has said nothing for PLAIN_EVERY_S: a
        step that takes minutes (AutoAttack on one batch) would otherwise leave the log silent that long."""
        while not self.stopping.wait(min(PLAIN_EVERY_S / 4, 5.0)):
            running = [t for t in self.tasks if not _done(t)]
            # a task just added may not have said its first line yet: it is about to
            if running and time.perf_counter() - self.said.get(running[-1].id, time.perf_counter()) >= PLAIN_EVERY_S:
                self._say(running[-1])

    def start(self) -> None:
        self.beat.start()

    def stop(self) -> None:
        self.stopping.set()
        self.beat.join()


class _ToSink(_Watched):
    """A run's tasks as events for its board (`RunBoard`), at most a few a second."""

    def __init__(self, sink: Sink, run: str) -> None:
        super().__init__(disable=True)
        self.sink, self.run = sink, run
        self.sent: Dict[TaskID, float] = {}

    def moved(self, task: Task, started: bool) -> None:
        now = time.perf_counter()
        if started:
            self.sink(('task', self.run, int(task.id), task.description, task.total, task.completed))
        elif _done(task) or now - self.sent[task.id] >= SEND_EVERY_S:
            self.sink(('update', self.run, int(task.id), task.completed, str(task.fields.get('ips') or '')))
        else:
            return
        self.sent[task.id] = now


class _Eta(TimeRemainingColumn):
    """rich's estimate from the task's recent pace, or the task's own `eta` field where it has one."""

    def render(self, task: Task) -> Any:
        eta = task.fields.get('eta')
        return Text(eta, style='progress.remaining') if eta else super().render(task)


def _rich_progress(stream: TextIO, *extra: Any, **kwargs: Any) -> Progress:
    columns = (TextColumn('[bold]{task.description}'), *extra, BarColumn(), MofNCompleteColumn(),
               TextColumn('{task.fields[ips]}'), TimeElapsedColumn(), TextColumn('ETA'), _Eta())
    return Progress(*columns, console=Console(file=stream), **kwargs)


@contextlib.contextmanager
def progress_bar(enabled: bool = True, stream: Optional[TextIO] = None) -> Iterator[Progress]:
    """Report the tasks of a long loop (rich's `add_task` / `update` / `advance`), as the module says.

    Args:
        enabled: Show progress on this process's stderr. Inside a board's run the progress goes to the board
            whatever this says (the board owns the terminal; a worker has none of its own).
        stream: Where to write (default: sys.stderr).
    """
    stream = stream or sys.stderr
    if _SINK is not None:
        bar: Progress = _ToSink(_SINK, _RUN or '')
    elif not enabled:
        bar = Progress(disable=True)
    elif not is_terminal(stream):
        bar = _Log(stream)
    else:
        bar = _rich_progress(stream, transient=False)
    with bar:
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
    global _SINK, _RUN, _OUTCOME
    before = _SINK, _RUN, _OUTCOME
    _SINK, _RUN, _OUTCOME = sink, run, None
    try:
        if sink is not None:
            sink(('start', run))
        yield
        if sink is not None:
            sink(('end', run, _OUTCOME or 'done'))
    finally:
        _SINK, _RUN, _OUTCOME = before


def report_outcome(outcome: str) -> None:
    """Say how the current run ended, for the board's line (default 'done'): a run that found its work held by
    another process, or that failed, must not read as done."""
    global _OUTCOME
    _OUTCOME = outcome


class RunBoard:
    """Shows many runs (grid cells, quickstart models), each run's current stage, and the whole with an ETA.

    Feed it the events of `progress_bar()` inside `reporting_to(board.handle, run)`, in this process or, through
    a queue, from worker processes (`bench.core.parallel.run_parallel`). A rich Progress keeps a row per running
    run (stage, step/total, elapsed, ETA) and an overall row over the runs: drawn live on stderr on a terminal;
    elsewhere, plain lines instead: each stage's start (and a line a minute), and each finished run with the
    overall ETA.

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
        self.progress = _rich_progress(self.stream, TextColumn('{task.fields[stage]}'), transient=False,
                                       refresh_per_second=4, disable=not self.live)
        self.rows: Dict[str, TaskID] = {}  # run -> its row
        self.stage_of: Dict[str, int] = {}  # run -> the task id (in its process) of its current stage
        self.said: Dict[str, float] = {}  # run -> when its last plain line was written
        self.overall: Optional[TaskID] = None

    def __enter__(self) -> 'RunBoard':
        self.progress.start()
        if self.live:
            self.overall = self.progress.add_task(f'{self.title}: runs done', total=len(self.runs), ips='',
                                                  stage='')
        elif self.enabled:
            self._say(f'{self.title}: {len(self.runs)} runs, {self.procs} at a time')
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

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
            self.rows[run] = self.progress.add_task(run, total=None, ips='', stage='starting')
            if not self.live:
                self._say(f'{self.title}: {run}: started')
        elif kind == 'task':
            _, _, task_id, description, total, completed = event
            self.stage_of[run] = task_id
            self.progress.reset(self.rows[run], total=total, completed=completed, stage=description, ips='')
            self.said[run] = time.perf_counter()
            if not self.live:
                self._say(f'{self.title}: {run}: {description} ({_count(self._row(run))})')
        elif kind == 'update':
            _, _, task_id, completed, info = event
            if self.stage_of.get(run) != task_id:
                return  # a stage that is no longer the run's current one
            self.progress.update(self.rows[run], completed=completed, ips=info)
            if not self.live and time.perf_counter() - self.said[run] >= PLAIN_EVERY_S:
                row = self._row(run)
                self._say(f'{self.title}: {run}: {row.fields["stage"]} {_count(row)} ({_clock(row.elapsed)} '
                          f'elapsed, ETA {_clock(row.time_remaining)})')
                self.said[run] = time.perf_counter()
        elif kind == 'end':
            outcome = event[2] if len(event) > 2 else 'done'
            self.finished.append(run)
            self.progress.remove_task(self.rows.pop(run))
            eta = _clock(self.overall_eta()) if len(self.finished) < len(self.runs) else '0:00:00'
            since = _clock(time.perf_counter() - self.t0)
            if self.live:
                self.progress.update(self.overall, completed=len(self.finished), eta=f'~{eta}')
                self.progress.console.print(f'{self.title}: {run}: {outcome} ({since} since start)')
            else:
                self._say(f'{self.title}: {run}: {outcome} ({len(self.finished)}/{len(self.runs)} runs, {since} elapsed, '
                          f'ETA ~{eta})')

    def _row(self, run: str) -> Task:
        return next(t for t in self.progress.tasks if t.id == self.rows[run])
