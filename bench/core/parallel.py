"""Runs in worker processes that share the machine's cores, show their progress, and stop on one Ctrl-C.

`run_parallel` runs named jobs (grid cells, quickstart models) `procs` at a time, each in a spawned worker with
cores/procs torch threads (in this process when procs is 1), and shows them on a `bench.core.progress.RunBoard`
fed by the workers' progress events through a queue.

Ctrl-C belongs to this process. A terminal sends SIGINT to every process of the foreground group, workers
included: they ignore it (from the moment they exist: SIGINT is ignored while the pool starts them, and a
spawned interpreter keeps an ignored SIGINT ignored). This process then cancels the queued jobs and terminates
the workers, and the KeyboardInterrupt goes on to the command line, which prints one line and exits 130. What a
killed job leaves is what an interrupted write leaves: every artefact is written atomically, so a finished one
is whole, an unfinished one absent, and a rerun resumes.
"""
from __future__ import annotations

import contextlib
import os
import queue as queue_module
import signal
import sys
from multiprocessing import get_context
from typing import Any, Callable, Iterator, List, Sequence, Tuple

from bench.core.progress import RunBoard, reporting_to

_EVENTS: Any = None  # a worker's queue to the board
_THREADS = 1  # a worker's torch threads


def threads_per_process(procs: int) -> int:
    return max(1, (os.cpu_count() or 2) // procs)


def _init_worker(threads: int, events: Any) -> None:
    global _EVENTS, _THREADS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    _EVENTS, _THREADS = events, threads


def _run_named(name: str, fn: Callable[..., Any], args: Tuple[Any, ...]) -> Any:
    # a job that uses torch has imported it by now (unpickling `fn` imports its module); one that does not
    # (a test's) starts in a fraction of a second
    if 'torch' in sys.modules:
        sys.modules['torch'].set_num_threads(_THREADS)
    with reporting_to(_EVENTS.put, name):
        return fn(*args)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored within the block (in the main thread; elsewhere signals cannot be set and are not delivered)."""
    try:
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def run_parallel(fn: Callable[..., Any], jobs: Sequence[Tuple[str, Tuple[Any, ...]]], procs: int, title: str,
                 progress: bool = True) -> List[Any]:
    """fn(*args) for each (name, args) of `jobs`, `procs` at a time; the results in the order of `jobs`.

    Args:
        fn: A module-level function (workers import it by name).
        jobs: (name shown on the board, arguments) per job.
        procs: Worker processes; 1 runs the jobs here, one after another.
        title: The board's title.
        progress: Show the board (on stderr).

    Raises:
        The first exception a job raises (the other jobs are stopped), or KeyboardInterrupt on Ctrl-C, once
        every worker is gone.
    """
    with RunBoard(title, [name for name, _ in jobs], procs, enabled=progress) as board:
        if procs <= 1 or len(jobs) <= 1:
            results = []
            for name, args in jobs:
                with reporting_to(board.handle, name):
                    results.append(fn(*args))
            return results
        ctx = get_context('spawn')  # no forked copies of torch's thread pools
        events = ctx.Queue()
        with _sigint_ignored():  # workers start (and stay) deaf to Ctrl-C
            pool = ctx.Pool(procs, initializer=_init_worker, initargs=(threads_per_process(procs), events))
        try:
            pending = [pool.apply_async(_run_named, (name, fn, args)) for name, args in jobs]
            while True:
                _drain(events, board.handle, timeout=0.2)
                failed = next((p for p in pending if p.ready() and not p.successful()), None)
                if failed is not None:
                    failed.get()  # raises the job's exception; the finally stops the rest
                if all(p.ready() for p in pending):
                    break
            pool.close()
            pool.join()
            _drain(events, board.handle, timeout=0)
            return [p.get() for p in pending]
        finally:
            with _sigint_ignored():  # a second Ctrl-C must not leave workers behind
                pool.terminate()
                pool.join()
                events.cancel_join_thread()
                events.close()


def _drain(events: Any, handle: Callable[[Any], None], timeout: float) -> None:
    """Show the events waiting in the queue; wait up to `timeout` seconds for the first."""
    block = timeout > 0
    while True:
        try:
            event = events.get(block, timeout) if block else events.get_nowait()
        except queue_module.Empty:
            return
        handle(event)
        block = False
