"""How torch's OpenMP threads wait for work: the default `timm-moe` sets before torch loads.

torch here runs its CPU ops on GNU libgomp (`torch.__config__.parallel_info()`). Between two parallel regions
libgomp's idle threads spin for work (about 300,000 turns, GOMP_SPINCOUNT) before they sleep. A PGD-7 training
step of a small model is thousands of short parallel regions, so its threads spin most of the time they do not
compute. On a quiet machine the spin costs nothing, since every thread has its own core; beside another busy
process it takes that process's core time and the scheduler makes the two take turns, and each region waits on
the thread that was descheduled: 2 threads then ran at 0.15-0.6x the speed of 1 (docs/PERFORMANCE.md, measured
by `benchmarks/bench_threads.py`). A passive wait sleeps at once, and gives the core back.

So the wait follows the machine's load when the command starts. Measured on a quiet 2-core machine
(docs/PERFORMANCE.md), the spin is what makes 2 threads pay: 1.4x one thread at width 8 and 1.9-2.4x at
width 64, where a passive wait gave 0.5x and 0.9-1.7x. Beside a busy process the spin collapses (0.34x) and
the passive wait holds 0.7-0.9x. The CLI therefore keeps libgomp's spin when the 1-minute load average is
below `BUSY_LOAD` and sets the passive wait at or above it. The load average lags (it is a 1-minute mean): a
command started just after another finished may wait passively on a machine that has just become quiet.

OpenMP reads these variables when torch loads, so they take effect in a process that sets them before importing
torch (the CLI's entry does) and in the processes it starts (they inherit the environment). A wait the user set
wins: with any of `WAIT_VARS` set, nothing is added (libgomp lets GOMP_SPINCOUNT override OMP_WAIT_POLICY, so
adding one beside the other would undo the user's choice).
"""
from __future__ import annotations

import os
from typing import Dict, MutableMapping, Optional

# every variable that decides how OpenMP threads wait (libgomp's, and Intel's OpenMP's KMP_BLOCKTIME)
WAIT_VARS = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')
OPENMP_ENV = {
    'OMP_WAIT_POLICY': 'PASSIVE',  # libgomp (and Intel's OpenMP): idle threads sleep instead of spinning
}


# another process keeps about half a core busy: from here on a spinning thread would fight it for a core
BUSY_LOAD = 0.5


def set_openmp_defaults(env: Optional[MutableMapping[str, str]] = None, load: Optional[float] = None) -> Dict[str, str]:
    """Set `OPENMP_ENV` in `env` (default: this process's environment) when the machine is busy (`load`, default
    the 1-minute load average, at least `BUSY_LOAD`), unless `env` sets a wait already (any of `WAIT_VARS`);
    returns the values that were set."""
    env = os.environ if env is None else env
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
    added = {} if any(k in env for k in WAIT_VARS) or load < BUSY_LOAD else dict(OPENMP_ENV)
    env.update(added)
    return added
