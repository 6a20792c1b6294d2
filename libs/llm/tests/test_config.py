"""The model settings from the environment, on the shared settings base."""

from __future__ import annotations

import pytest

from aether_llm import LLMSettings
from aether_llm.config import DEFAULT_TIERS, OFFLINE_MODEL
from aether_runtime.settings import SettingsError


def test_without_a_key_every_tier_is_the_offline_model() -> None:
    settings = LLMSettings.from_env({})
    assert settings.tiers == DEFAULT_TIERS
    assert settings.offline and settings.model_for("complex") == OFFLINE_MODEL
    assert (settings.max_retries, settings.timeout_seconds) == (4, 120.0)


def test_the_key_endpoint_tiers_and_limits_are_read() -> None:
    settings = LLMSettings.from_env(
        {
            "ANTHROPIC_API_KEY": "k",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
            "AETHER_MODEL_SMALL": "small-one",
            "AETHER_MODEL_MAX_RETRIES": "1",
            "AETHER_MODEL_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert settings.model_for("small") == "small-one"
    assert settings.model_for("standard") == DEFAULT_TIERS["standard"]
    assert (settings.base_url, settings.max_retries, settings.timeout_seconds) == (
        "http://127.0.0.1:9",
        1,
        2.5,
    )


@pytest.mark.parametrize(
    ("raw", "said"),
    [("1", True), ("yes", True), ("no", False), ("0", False), ("", None)],
)
def test_offline_may_be_said_outright_where_the_key_is_not_given(
    raw: str, said: bool | None
) -> None:
    settings = LLMSettings.from_env({"AETHER_MODEL_OFFLINE": raw})
    assert settings.offline_mode is said
    assert settings.offline is (True if said is None else said)  # unsaid: by the (absent) key


def test_an_offline_flag_that_says_neither_is_refused_not_taken_as_unsaid() -> None:
    with pytest.raises(SettingsError, match="AETHER_MODEL_OFFLINE='maybe'"):
        LLMSettings.from_env({"AETHER_MODEL_OFFLINE": "maybe"})


def test_a_bad_limit_is_refused_naming_its_variable() -> None:
    with pytest.raises(SettingsError, match="AETHER_MODEL_MAX_RETRIES"):
        LLMSettings.from_env({"AETHER_MODEL_MAX_RETRIES": "four"})
