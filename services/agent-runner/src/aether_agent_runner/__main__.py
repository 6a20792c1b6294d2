"""``python -m aether_agent_runner``."""

from aether_agent_runner.bootstrap import bootstrap
from aether_agent_runner.config import SERVICE_NAME, RunnerSettings
from aether_runtime import configure_logging, serve


def main() -> None:
    settings = RunnerSettings.from_env()
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    serve(bootstrap(settings).service)


if __name__ == "__main__":
    main()
