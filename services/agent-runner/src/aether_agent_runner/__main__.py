"""``python -m aether_agent_runner``."""

from aether_agent_runner.bootstrap import bootstrap
from aether_agent_runner.config import SERVICE_NAME, RunnerSettings
from aether_runtime import configure_logging, serve
from aether_runtime.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit(RunnerSettings.from_env, SERVICE_NAME)
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    serve(bootstrap(settings).service)


if __name__ == "__main__":
    main()
