"""Run a module under cProfile and save the profile when the process ends, by a signal too.

    python bench/profiled.py <out.prof> -m <module>

``python -m cProfile`` writes nothing for a server stopped with SIGTERM: uvicorn handles
the signal, shuts down, then raises it again with the default handler, which ends the
process before the profile is written. Here SIGTERM's default becomes a normal exit.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    out, module = sys.argv[1], sys.argv[3]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = [module]
    profile = cProfile.Profile()
    profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
