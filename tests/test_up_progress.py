"""What ``aether up`` says while it starts: the line naming what is still awaited never
names a step it has already said is done (it once said "waiting for NATS and PostgreSQL"
ten seconds in, after "✓ NATS and PostgreSQL", while the services were being forked)."""

from __future__ import annotations

import io
import re

from aether.localstack import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(out: io.StringIO) -> list[str]:
    """The lines written, with durations made comparable (the ticker may add a second)."""
    return [re.sub(r"\(\d+s\)", "(Ns)", line) for line in out.getvalue().splitlines()]


def test_a_plain_log_names_what_is_awaited_after_each_step() -> None:
    out = io.StringIO()
    progress = Progress(out)
    try:
        progress.waiting = "NATS and PostgreSQL"
        progress.started -= 12  # a first start's database took a while
        progress.show()
        progress.done("  ✓ NATS and PostgreSQL (9.0s)", "scheduler, planner")
        progress.started -= 10  # the next line, ten seconds on
        progress.show()
    finally:
        progress.close()
    assert shown(out) == [
        "  … waiting for NATS and PostgreSQL (Ns)",
        "  ✓ NATS and PostgreSQL (9.0s)",
        "  … waiting for scheduler, planner (Ns)",
    ]


def test_a_terminal_line_refreshed_after_a_step_names_the_next() -> None:
    out = Terminal()
    progress = Progress(out)
    try:
        progress.waiting = "NATS and PostgreSQL"
        progress.show()
        progress.done("  ✓ NATS and PostgreSQL (9.0s)", "scheduler, planner")
        progress.show()
    finally:
        progress.close()
    written = out.getvalue()
    done_at = written.index("  ✓ NATS and PostgreSQL (9.0s)\n")
    after = written[done_at:].split("\r\x1b[2K")
    assert after[1].startswith("  … waiting for scheduler, planner ("), after
    assert "NATS and PostgreSQL" not in "".join(after[1:])
