"""The planner starts without the anthropic SDK: it is imported at the first model call
or the first reply replayed from the journal (``aether_llm.client.LazyClient``), not at
every start, where it cost about 1.3 s of CPU."""

from __future__ import annotations

import os
import subprocess
import sys

START = """
import sys
import aether_planner.__main__
from aether_planner.bootstrap import bootstrap

planner = bootstrap()
print(type(planner).__name__, 'anthropic' in sys.modules)
"""


def test_the_planner_is_built_without_importing_the_anthropic_sdk() -> None:
    # Without a key: the offline model, as a stack started for tests and demos runs it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    started = subprocess.run(
        [sys.executable, "-c", START], capture_output=True, text=True, check=True, env=env
    )
    assert started.stdout.split() == ["Planner", "False"]
