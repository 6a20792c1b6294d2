"""The settings base: each variable declared once, converted to its type, named on error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

import pytest

from aether_runtime.settings import (
    Env,
    EnvSettings,
    Flag,
    Names,
    RuntimeSettings,
    ServiceSettings,
    SettingsError,
    none_or,
    setting,
)


class Example(ServiceSettings, frozen=True, kw_only=True):
    DEFAULT_PORT: ClassVar[int] = 8123

    attempts: int = setting("EXAMPLE_ATTEMPTS", 3)
    ratio: float = setting("EXAMPLE_RATIO", 0.8)
    budget: float | None = setting("EXAMPLE_BUDGET", None)
    cap: Annotated[float | None, Env(parse=none_or(float))] = setting("EXAMPLE_CAP", 5.0)
    verify: Flag = setting("EXAMPLE_VERIFY", True)
    tools: Names = setting("EXAMPLE_TOOLS", ("a", "b"))
    scopes: Annotated[tuple[str, ...], Env(parse=str.split, keep_empty=True)] = setting(
        "EXAMPLE_SCOPES", ("openid",)
    )
    where: Path = setting("EXAMPLE_WHERE", Path("/tmp"))


def test_unset_and_blank_variables_keep_the_declared_defaults() -> None:
    settings = Example.from_env({"EXAMPLE_ATTEMPTS": "  ", "EXAMPLE_RATIO": ""})
    assert settings == Example(runtime=RuntimeSettings(port=8123))


def test_each_variable_converts_to_its_fields_type() -> None:
    settings = Example.from_env(
        {
            "EXAMPLE_ATTEMPTS": " 7 ",
            "EXAMPLE_RATIO": "0.5",
            "EXAMPLE_BUDGET": "12.5",
            "EXAMPLE_CAP": "None",
            "EXAMPLE_VERIFY": "off",
            "EXAMPLE_TOOLS": "x, y z",
            "EXAMPLE_SCOPES": "",
            "EXAMPLE_WHERE": "/srv",
            "PORT": "9000",
        }
    )
    assert (settings.attempts, settings.ratio) == (7, 0.5)
    assert (settings.budget, settings.cap) == (12.5, None)
    assert (settings.verify, settings.tools, settings.scopes) == (False, ("x", "y", "z"), ())
    assert settings.where == Path("/srv")
    assert settings.runtime.port == 9000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EXAMPLE_ATTEMPTS", "three"),
        ("EXAMPLE_RATIO", "0,5"),
        ("EXAMPLE_BUDGET", "lots"),
        ("EXAMPLE_CAP", "unlimited"),
        ("EXAMPLE_VERIFY", "maybe"),
        ("PORT", "80a"),
    ],
)
def test_a_value_that_does_not_convert_is_refused_naming_its_variable(
    name: str, value: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Example.from_env({name: value})
    assert str(refused.value).startswith(f"{name}={value!r} is not valid")


def test_a_secret_may_come_from_the_file_a_second_variable_names(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-the-file\n")
    assert RuntimeSettings.from_env({"NATS_PASSWORD_FILE": str(secret)}).nats_password == (
        "from-the-file"
    )
    given = {"NATS_PASSWORD": "given", "NATS_PASSWORD_FILE": str(secret)}
    assert RuntimeSettings.from_env(given).nats_password == "given"
    with pytest.raises(SettingsError, match="NATS_PASSWORD_FILE"):
        RuntimeSettings.from_env({"NATS_PASSWORD_FILE": str(tmp_path / "missing")})


def test_declared_lists_every_variable_a_class_reads() -> None:
    declared = Example.declared()
    assert declared["EXAMPLE_TOOLS"] == "tools"
    assert "PORT" not in declared  # the runtime's, declared by RuntimeSettings
    assert set(RuntimeSettings.declared()) >= {"NATS_URL", "PORT", "NATS_PASSWORD_FILE"}


def test_the_services_own_port_is_the_default_and_port_overrides_it() -> None:
    assert RuntimeSettings.for_service(8101, {}).port == 8101
    assert RuntimeSettings.for_service(8101, {"PORT": "0"}).port == 0


class Plain(EnvSettings, frozen=True, kw_only=True):
    name: str = setting("PLAIN_NAME", "x")


def test_a_class_without_nested_parts_reads_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLAIN_NAME", "from-os")
    assert Plain.from_env().name == "from-os"


class Optional(EnvSettings, frozen=True, kw_only=True):
    names: Names | None = setting("OPTIONAL_NAMES", None)


def test_a_reader_applies_to_an_optional_field_too() -> None:
    assert Optional.from_env({"OPTIONAL_NAMES": "a,b"}).names == ("a", "b")
    assert Optional.from_env({}).names is None


def test_one_value_is_read_as_from_env_reads_it_without_the_others() -> None:
    env = {"EXAMPLE_CAP": "none", "EXAMPLE_ATTEMPTS": "not a number"}
    assert Example.value_of("cap", env) is None
    assert Example.value_of("tools", env) == ("a", "b")
    with pytest.raises(SettingsError, match="EXAMPLE_ATTEMPTS"):
        Example.value_of("attempts", env)


def test_a_process_is_the_only_one_of_its_service_only_when_told() -> None:
    assert RuntimeSettings.from_env({}).one_process is False
    assert RuntimeSettings.from_env({"AETHER_ONE_PROCESS": "1"}).one_process is True
    assert RuntimeSettings.from_env({"AETHER_ONE_PROCESS": "false"}).one_process is False
