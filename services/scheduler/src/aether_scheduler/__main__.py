"""``python -m aether_scheduler``."""

from aether_runtime import configure_logging, serve
from aether_runtime.settings import settings_or_exit
from aether_scheduler.bootstrap import bootstrap
from aether_scheduler.config import SERVICE_NAME, SchedulerSettings


def main() -> None:
    settings = settings_or_exit(SchedulerSettings.from_env, SERVICE_NAME)
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    serve(bootstrap(settings).service)


if __name__ == "__main__":
    main()
