"""Jobs for `bench.core.parallel.run_parallel` tests that start in a fraction of a second (no torch), and a
command that runs them as a verb would: `python -c 'import parallel_jobs as p; p.main()' OUT SECONDS...` runs one job per SECONDS, two
at a time, and ends with one line and exit status 130 on Ctrl-C."""
import sys
import time
from pathlib import Path

from bench.core.atomic import write_json_atomic
from bench.core.parallel import run_parallel
from bench.core.progress import progress_bar, stage


def sleepy(out: str, name: str, seconds: float) -> str:
    """Sleep `seconds` in ten steps that report progress, then write OUT/NAME.json (atomically)."""
    with progress_bar() as bar:
        step = stage(bar, f'sleep {seconds} s', 10)
        for _ in range(10):
            time.sleep(seconds / 10)
            step()
    write_json_atomic(dict(name=name, seconds=seconds), Path(out) / f'{name}.json')
    return name


def failing(message: str) -> None:
    raise RuntimeError(message)


def main() -> None:
    out, seconds = sys.argv[1], [float(s) for s in sys.argv[2:]]
    try:
        run_parallel(sleepy, [(f'job{i}', (out, f'job{i}', s)) for i, s in enumerate(seconds)], 2, 'jobs')
    except KeyboardInterrupt:
        print('jobs: interrupted', file=sys.stderr)
        sys.exit(130)
