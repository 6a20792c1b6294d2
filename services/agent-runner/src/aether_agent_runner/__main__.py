"""``python -m aether_agent_runner``."""

from aether_agent_runner.adapters.steps import exit_past_stuck_threads
from aether_agent_runner.bootstrap import bootstrap
from aether_agent_runner.config import SERVICE_NAME, RunnerSettings
from aether_runtime import configure_logging, serve
from aether_runtime.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit(RunnerSettings.from_env, SERVICE_NAME)
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    runner = bootstrap(settings)
    # Last of all: a thread stuck in the kernel would otherwise keep the process alive.
    if runner.steps is not None:
        runner.service.on_stopped.append(exit_past_stuck_threads(runner.steps))
    serve(runner.service)


if __name__ == "__main__":
    main()
