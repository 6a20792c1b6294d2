"""``python -m aether_scheduler``."""

from aether_runtime import configure_logging, serve
from aether_scheduler.bootstrap import bootstrap
from aether_scheduler.config import SERVICE_NAME, SchedulerSettings


def main() -> None:
    settings = SchedulerSettings.from_env()
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    serve(bootstrap(settings).service)


if __name__ == "__main__":
    main()
