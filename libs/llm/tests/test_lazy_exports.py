"""The package's names load their modules when first used, so that a service that needs
only the settings or the price table does not import the anthropic SDK."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aether_llm


def test_every_exported_name_resolves_to_its_module_s_object() -> None:
    for name in aether_llm.__all__:
        value = getattr(aether_llm, name)
        assert value is not None, name
    assert sorted(aether_llm.__all__) == sorted(aether_llm._HOMES)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        aether_llm.no_such_name  # noqa: B018


@pytest.mark.parametrize("module", ["aether_scheduler.bootstrap", "aether_gateway.bootstrap"])
def test_services_that_call_no_model_start_without_the_anthropic_sdk(module: str) -> None:
    imported = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('anthropic' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "False"
