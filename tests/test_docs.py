"""The documentation stays navigable and true to the code: the README keeps its set-up
commands, every link lands on a page and a heading that exist, every page is in the index,
and every command, benchmark and setting the pages name exists."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INDEX = ROOT / "docs" / "README.md"
# Pages the index links that are written beside this one and may land after it; each is
# checked like any other page once it exists.
ADDED_SEPARATELY = {
    "docs/transcripts.md",
    "docs/oidc.md",
    "docs/remote-repositories.md",
    "docs/caching.md",
    "docs/runtimes.md",
    "docs/sandbox.md",
    "docs/recovery.md",
}
SET_UP = (
    "```sh\n"
    "uv run aether demo     # creates a sample repository and runs a whole mission on it\n"
    "uv run pytest          # the tests, against real NATS JetStream and PostgreSQL\n"
    "```\n"
)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def pages() -> list[Path]:
    found = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in found if p.exists()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def links(page: Path) -> Iterator[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    for link in _LINK.findall(text):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", link):  # not http:, mailto:, …
            yield link


def code_lines(page: Path) -> Iterator[str]:
    for block in _FENCE.findall(page.read_text(encoding="utf-8")):
        yield from block.splitlines()[1:-1]


def test_the_readme_keeps_its_two_set_up_commands_and_stays_short():
    text = README.read_text(encoding="utf-8")
    assert SET_UP in text
    assert len(text.splitlines()) < 250, "the README is an entry point: move details to docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_lands_on_a_page_and_heading_that_exist(page: Path):
    broken = []
    for link in links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        name = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else ""
        if not target.exists():
            if name not in ADDED_SEPARATELY:
                broken.append(f"{link}: no such file")
            continue
        if anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading with that anchor")
    assert not broken, broken


def test_the_anchor_rule_is_githubs():
    assert slug("The scheduler's rules") == "the-schedulers-rules"
    assert slug("The command line and `aether up`") == "the-command-line-and-aether-up"
    assert slug("What a container or pod must allow") == "what-a-container-or-pod-must-allow"


def test_every_page_is_in_the_index():
    linked = {(INDEX.parent / link.partition("#")[0]).resolve() for link in links(INDEX)}
    docs = ROOT / "docs"
    every = [p for p in docs.glob("*.md") if p != INDEX] + [docs / "decisions" / "README.md"]
    missing = sorted(str(p.relative_to(ROOT)) for p in every if p.resolve() not in linked)
    assert not missing, f"link these from docs/README.md: {missing}"


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def _shown_commands() -> Iterator[tuple[str, str]]:
    """Every `aether …` line in the pages' code blocks (the generated reference aside)."""
    for page in pages():
        if page.name == "cli.md":
            continue
        for line in code_lines(page):
            line = line.split(" #", 1)[0].strip()
            if line.startswith("uv run aether "):
                line = line.removeprefix("uv run ")
            if line.startswith("aether ") and " | " not in line:
                yield str(page.relative_to(ROOT)), line


def test_every_aether_command_the_pages_show_exists_with_its_options():
    parsers = dict(_commands(_parser(), ()))
    shown = list(_shown_commands())
    assert len(shown) > 20  # the scan finds the commands at all
    wrong = []
    for where, line in shown:
        words = line.split()[1:]
        path: tuple[str, ...] = ()
        while words and (*path, words[0]) in parsers:
            path, words = (*path, words[0]), words[1:]
        options = {o for a in parsers[path]._actions for o in a.option_strings}
        for word in words:
            if word.startswith(('"', "'")):
                break  # a quoted argument: the rest is its text
            option = word.strip("[]").split("=", 1)[0]
            if option.startswith("-") and option != "-" and option not in options:
                wrong.append(f"{where}: `{line}`: aether {' '.join(path)} has no {option}")
        if not path:
            wrong.append(f"{where}: `{line}`: no such command")
    assert not wrong, wrong


def test_every_benchmark_the_pages_name_exists_with_its_options():
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages())
    runs = re.findall(r"uv run python (?:-m )?(bench[\w./]*)((?: \[?--?[\w-]+[^`\n]*)?)", text)
    assert len(runs) > 10
    wrong = []
    for target, rest in runs:
        module = target.removesuffix(".py").replace("/", ".")
        path = ROOT / module.replace(".", "/")
        source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path
        if source.is_dir():
            source = source / "__main__.py"
        if not source.exists():
            wrong.append(f"{target}: no such script")
            continue
        code = source.read_text(encoding="utf-8")
        for option in re.findall(r"(--[a-z][\w-]*)", rest):
            if f'"{option}"' not in code:
                wrong.append(f"{target}: no {option}")
    assert not wrong, wrong


# A setting's name, whole (a word boundary on each side).
SETTING_NAME = re.compile(r"\b((?:AETHER|ANTHROPIC|NATS)_[A-Z0-9_]*[A-Z0-9])\b")


def test_every_setting_the_pages_name_is_read_somewhere():
    named: set[str] = set()
    for page in pages():
        text = page.read_text(encoding="utf-8")
        named |= set(SETTING_NAME.findall(text))
    sources = [ROOT / n for n in ("docker-compose.yml", "Dockerfile", ".ci/run", "conftest.py")]
    for folder in ("libs", "services", "src", "tests", "bench", "deploy", "k8s"):
        sources += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.suffix in {".py", ".yaml", ".yml", ".conf", ".sh", ".json"}
        ]
    code = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sources)
    # f"AETHER_ESTIMATE_USD_{tier.upper()}" reads one setting per tier.
    for prefix in re.findall(r"f[\"']((?:AETHER|ANTHROPIC)_[A-Z0-9_]*)\{tier\.upper\(\)\}", code):
        code += "".join(f" {prefix}{tier}" for tier in ("SMALL", "STANDARD", "COMPLEX"))
    assert len(named) > 80
    # Every whole name in the code, found in one pass (a search per name took seconds).
    unknown = sorted(named - set(SETTING_NAME.findall(code)))
    assert not unknown, f"the pages name settings nothing reads: {unknown}"
