"""The git broker's settings from the environment: meanings kept, bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether_git_broker import GitBrokerSettings
from aether_runtime.settings import SettingsError


def test_defaults_without_any_variable() -> None:
    settings = GitBrokerSettings.from_env({})
    assert settings.worktrees_dir == Path("~/.local/share/aether/worktrees").expanduser()
    assert settings.clones_dir == settings.worktrees_dir.parent
    assert (settings.verify, settings.git_http_port, settings.repository_roots) == (True, None, ())
    assert settings.runtime.port == 8104


def test_variables_are_read_with_their_meanings(tmp_path: Path) -> None:
    settings = GitBrokerSettings.from_env(
        {
            "AETHER_WORKTREES_DIR": str(tmp_path / "wt"),
            "AETHER_GIT_DATA_DIR": str(tmp_path / "data"),
            "AETHER_REPOSITORY_ROOTS": f"{tmp_path}/a::{tmp_path}/b/",
            "AETHER_VERIFY": "0",
            "AETHER_GIT_HTTP_PORT": "9418",
            "AETHER_GIT_TOKEN": "secret",
            "AETHER_PUSH_REMOTE": "",
            "AETHER_ACK_WAIT_SECONDS": "2.5",
        }
    )
    assert settings.worktrees_dir == tmp_path / "wt"
    assert settings.clones_dir == tmp_path / "data"
    assert settings.repository_roots == (f"{tmp_path}/a", f"{tmp_path}/b")
    assert (settings.verify, settings.git_http_port, settings.push_remote) == (False, 9418, None)
    assert settings.ack_wait_seconds == 2.5


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AETHER_GIT_HTTP_PORT": "9418"}, "AETHER_GIT_TOKEN"),
        ({"AETHER_GIT_READ_TOKEN": "short"}, "AETHER_GIT_READ_TOKEN"),
        ({"AETHER_MAX_LISTED_FILES": "many"}, "AETHER_MAX_LISTED_FILES"),
        ({"AETHER_VERIFY": "perhaps"}, "AETHER_VERIFY"),
        ({"AETHER_REPOSITORY_ROOTS": "relative/path"}, "relative/path"),
    ],
)
def test_a_setting_the_broker_cannot_start_with_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        GitBrokerSettings.from_env(env)
