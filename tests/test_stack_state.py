"""What ``aether up`` records about its stack in the home (``stack.json``)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aether.localstack import Supervisor


def test_the_state_file_holds_no_nats_password(tmp_path: Path) -> None:
    # The home (and so stack.json) is readable by other users; the bus administrator's
    # password belongs under credentials/ alone.
    secret = "s3cr3t-admin-password"
    stack: Any = SimpleNamespace(
        home=tmp_path,
        _nats=None,
        _postgres=None,
        processes={},
        gateway_url="http://127.0.0.1:8100",
        nats_url=f"nats://aether:{secret}@127.0.0.1:4222",
        ports={"gateway": 8100},
        event_id_secret="event-id-secret-" * 4,
    )
    Supervisor(stack=stack, stopping=threading.Event(), out=io.StringIO()).record()

    text = (tmp_path / "stack.json").read_text(encoding="utf-8")
    assert secret not in text
    # Nor the event id secret: only its fingerprint, which a restore compares.
    assert "event-id-secret-" not in text
    state = json.loads(text)
    assert state["nats_url"] == "nats://127.0.0.1:4222"
    assert state["gateway_url"] == "http://127.0.0.1:8100"
