"""``python -m aether_scheduler``."""

from aether_runtime import configure_logging, serve
from aether_runtime.settings import RuntimeSettings
from aether_scheduler.app import DEFAULT_PORT, build


def main() -> None:
    settings = RuntimeSettings.from_env(DEFAULT_PORT)
    configure_logging("scheduler", settings.log_level)
    serve(build(settings))


if __name__ == "__main__":
    main()
