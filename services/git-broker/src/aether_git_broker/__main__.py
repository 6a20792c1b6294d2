"""``python -m aether_git_broker``: run the git broker (port 8104 unless PORT is set)."""

from __future__ import annotations

from aether_git_broker.adapters.ssh import key_problem
from aether_git_broker.bootstrap import bootstrap
from aether_git_broker.config import SERVICE_NAME, GitBrokerSettings
from aether_runtime import configure_logging, serve
from aether_runtime.settings import refuse, settings_or_exit


def main() -> None:
    settings = settings_or_exit(GitBrokerSettings.from_env, SERVICE_NAME)
    # A key ssh cannot open (a wrong passphrase, an encrypted key without one) is the
    # operator's to fix: said now, not at the first mission on an SSH remote.
    problem = key_problem(settings.ssh)
    if problem is not None:
        refuse(SERVICE_NAME, problem)
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    serve(bootstrap(settings).service)


if __name__ == "__main__":
    main()
