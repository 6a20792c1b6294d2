"""The chaos benchmark: a 20-task mission under SIGKILLs of services and of nats-server.

Each trial starts the five services and a nats-server as separate processes, submits the
chaos mission (``model.py``), kills one target (sometimes two) at a random moment, during
start-up or during the mission, restarts it, and checks (``checks.py``) that the mission
completed; every task merged once and no event was stored twice; no step asked the model
twice (unless its caller died with the call in flight); the final tree is the fault-free
run's; and the gateway's read model says what the stream says. After a nats-server kill it
measures the stall: the longest time without a stored event around the restart.

    uv run python -m bench.chaos [--trials 50] [--seed N] [--only 3,7]
"""

from .checks import CHECKS, KillRecord, Stall
from .trial import NATS, TARGETS, Kill, Reference, Trial, TrialResult, TrialSettings

__all__ = [
    "CHECKS",
    "NATS",
    "TARGETS",
    "Kill",
    "KillRecord",
    "Reference",
    "Stall",
    "Trial",
    "TrialResult",
    "TrialSettings",
]
