"""``python -m aether_planner``."""

from aether_planner.bootstrap import bootstrap
from aether_planner.config import SERVICE_NAME, PlannerSettings
from aether_runtime import configure_logging, serve
from aether_runtime.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit(PlannerSettings.from_env, SERVICE_NAME)
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    serve(bootstrap(settings).service)


if __name__ == "__main__":
    main()
