"""``python -m aether_planner``."""

from aether_planner.app import DEFAULT_PORT, build
from aether_runtime import RuntimeSettings, configure_logging, serve


def main() -> None:
    settings = RuntimeSettings.for_service(DEFAULT_PORT)
    configure_logging("planner", settings.log_level)
    serve(build(settings))


if __name__ == "__main__":
    main()
