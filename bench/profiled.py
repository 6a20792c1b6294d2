"""Run a module under cProfile and save the profile when the process ends, by a signal too.

    python bench/profiled.py [--cpu] <out.prof> -m <module>

``--cpu`` times the functions by the CPU time of the thread they run in (the profiled
thread is the main one, the event loop's) instead of the wall clock: on a loaded machine,
wall time charges a function for the time other processes ran, and the process's CPU
time for what its worker threads ran meanwhile.

``python -m cProfile`` writes nothing for a server stopped with SIGTERM: uvicorn handles
the signal, shuts down, then raises it again with the default handler, which ends the
process before the profile is written. Here SIGTERM's default becomes a normal exit.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time


def main() -> None:
    args = sys.argv[1:]
    cpu = args[:1] == ["--cpu"]
    if cpu:
        args = args[1:]
    if len(args) != 3 or args[1] != "-m":
        raise SystemExit(__doc__)
    out, module = args[0], args[2]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = [module]
    profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
    profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
