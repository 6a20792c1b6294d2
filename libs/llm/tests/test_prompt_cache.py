"""The local server's prefix-cache accounting, through the real anthropic SDK, against the
examples and rules of Anthropic's prompt caching guide.

Tokens here are words (``words`` below), so every figure can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from aether_llm import MessagesServer, PromptCache, Reply, text_block
from aether_llm.prompt_cache import approximate_tokens, minimum_cacheable_tokens
from aether_runtime import tls

MODEL = "claude-sonnet-4-6"  # 1,024-token minimum
EPHEMERAL: Any = {"type": "ephemeral"}


def words(block: dict[str, Any]) -> int:
    """A block's tokens: the words of its text (a tool definition: its description's)."""
    text = block.get("text") or block.get("content") or block.get("description") or ""
    return max(1, len(str(text).split()))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> PromptCache:
    return PromptCache(clock=clock, count_tokens=words)


@pytest.fixture(scope="module")
def server() -> Iterator[MessagesServer]:
    running = MessagesServer(lambda request: Reply([text_block("ok")], output_tokens=7))
    yield running.start()
    running.stop()


@pytest.fixture
def client(server: MessagesServer, cache: PromptCache) -> anthropic.Anthropic:
    server.cache = cache  # a fresh cache for every test
    return anthropic.Anthropic(
        api_key="test",
        base_url=server.url,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(verify=tls.shared()),
    )


def text(n: int, word: str = "w", **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": " ".join([word] * n), **extra}


def usage(client: anthropic.Anthropic, **request: Any) -> tuple[int, int, int]:
    """(cache writes, cache reads, plain input) of one call."""
    request.setdefault("messages", [{"role": "user", "content": "Analyze the themes."}])
    message = client.messages.create(model=request.pop("model", MODEL), max_tokens=100, **request)
    u = message.usage
    assert u.output_tokens == 7
    return u.cache_creation_input_tokens or 0, u.cache_read_input_tokens or 0, u.input_tokens


def conversation(blocks: int, changed: int | None = None) -> list[Any]:
    """``blocks`` user/assistant turns of one 100-token block each; ``changed``: the
    1-based block whose text differs."""
    out = []
    for i in range(1, blocks + 1):
        word = "changed" if i == changed else f"b{i}"
        out.append({"role": "user" if i % 2 else "assistant", "content": [text(100, word)]})
    return out


def marked(messages: list[Any], *positions: int) -> list[Any]:
    """The messages with a breakpoint on the block at each 1-based position."""
    out = [dict(m, content=[dict(b) for b in m["content"]]) for m in messages]
    for position in positions:
        out[position - 1]["content"][-1]["cache_control"] = EPHEMERAL
    return out


def test_the_guide_example_writes_the_book_once_then_reads_it(
    client: anthropic.Anthropic,
) -> None:
    system = [
        text(20, "intro"),
        text(188_086, "book", cache_control=EPHEMERAL),
    ]
    first = usage(client, system=system)
    second = usage(client, system=system)
    # The guide: {"cache_creation_input_tokens":188086,...,"input_tokens":21} and then
    # {"cache_read_input_tokens":188086,...}; here the prefix also holds the 20-word line.
    assert first == (188_106, 0, 3)
    assert second == (0, 188_106, 3)


def test_a_prefix_below_the_minimum_is_not_cached_and_costs_plain_input(
    client: anthropic.Anthropic,
) -> None:
    system = [text(1000, cache_control=EPHEMERAL)]
    assert usage(client, system=system) == (0, 0, 1003)
    assert usage(client, system=system) == (0, 0, 1003)
    assert usage(client, system=system, model="claude-haiku-9") == (0, 0, 1003)
    assert usage(client, system=[text(1024, cache_control=EPHEMERAL)]) == (1024, 0, 3)


def test_minimum_cacheable_lengths_follow_the_model() -> None:
    assert minimum_cacheable_tokens("claude-sonnet-5-5") == 1024
    assert minimum_cacheable_tokens("claude-3-haiku-20240307") == 2048
    assert minimum_cacheable_tokens("claude-haiku-5-5") == 2048
    assert minimum_cacheable_tokens("claude-opus-4-6") == 4096
    assert minimum_cacheable_tokens("x", {"x": 512}) == 512


def test_the_lookback_finds_the_previous_breakpoint_within_twenty_blocks(
    client: anthropic.Anthropic,
) -> None:
    thirty = conversation(30)
    assert usage(client, messages=marked(thirty, 30)) == (3000, 0, 0)
    # One more block, the marker moved to it: the entry at block 30 is found looking back.
    assert usage(client, messages=marked(conversation(31), 31)) == (100, 3000, 0)


def test_a_change_inside_the_prefix_misses_and_writes_it_all_again(
    client: anthropic.Anthropic,
) -> None:
    usage(client, messages=marked(conversation(30), 30))
    assert usage(client, messages=marked(conversation(31, changed=25), 31)) == (3100, 0, 0)


def test_more_than_twenty_new_blocks_miss_the_entry_unless_it_keeps_its_breakpoint(
    client: anthropic.Anthropic,
) -> None:
    usage(client, messages=marked(conversation(30), 30))
    # Block 55 looks back over 55..36 only: the entry at 30 is out of reach.
    assert usage(client, messages=marked(conversation(55), 55)) == (5500, 0, 0)
    usage(client, messages=marked(conversation(60), 30))  # the entry at 30 is still there
    # A second breakpoint on block 30 reads it; blocks 31..80 are written.
    assert usage(client, messages=marked(conversation(80), 30, 80)) == (5000, 3000, 0)


def test_writes_that_no_request_read_are_counted(
    client: anthropic.Anthropic, cache: PromptCache
) -> None:
    usage(client, messages=marked(conversation(12), 12))
    assert cache.writes() == (1200, 1200)
    usage(client, messages=marked(conversation(20), 12, 20))
    assert cache.writes() == (2000, 800)  # the first write was read back
    usage(client, messages=marked(conversation(30, changed=1), 30))
    assert cache.writes() == (5000, 3800)


def test_entries_exist_only_where_a_breakpoint_was(client: anthropic.Anthropic) -> None:
    usage(client, messages=marked(conversation(30), 30))
    # Block 24 was never marked: a prefix ending there is not cached, even though it is
    # a prefix of the entry at block 30.
    assert usage(client, messages=marked(conversation(24), 24)) == (2400, 0, 0)


def test_a_marker_is_not_part_of_the_prefix(client: anthropic.Anthropic) -> None:
    usage(client, messages=marked(conversation(12), 12))
    assert usage(client, messages=marked(conversation(12), 6, 12)) == (0, 1200, 0)


def test_string_content_is_one_text_block(client: anthropic.Anthropic) -> None:
    words_ = " ".join(["w"] * 1200)
    marked_ = [
        {
            "role": "user",
            "content": [{"type": "text", "text": words_, "cache_control": EPHEMERAL}],
        }
    ]
    assert usage(client, messages=marked_) == (1200, 0, 0)
    plain = [
        {"role": "user", "content": words_},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": [text(5, cache_control=EPHEMERAL)]},
    ]
    assert usage(client, messages=plain) == (6, 1200, 0)


def test_at_most_four_breakpoints(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks"):
        usage(client, messages=marked(conversation(5), 1, 2, 3, 4, 5))
    usage(client, messages=marked(conversation(4), 1, 2, 3, 4))


def test_top_level_cache_control_marks_the_last_block(client: anthropic.Anthropic) -> None:
    assert usage(client, messages=conversation(12), cache_control=EPHEMERAL) == (1200, 0, 0)
    assert usage(client, messages=conversation(13), cache_control=EPHEMERAL) == (100, 1200, 0)


def test_an_entry_lives_five_minutes_from_its_last_use(
    client: anthropic.Anthropic, clock: Clock
) -> None:
    system = [text(2000, cache_control=EPHEMERAL)]
    assert usage(client, system=system) == (2000, 0, 3)
    clock.now += 299
    assert usage(client, system=system) == (0, 2000, 3)  # and refreshed
    clock.now += 299
    assert usage(client, system=system) == (0, 2000, 3)
    clock.now += 301
    assert usage(client, system=system) == (2000, 0, 3)


def test_a_one_hour_entry_and_the_creation_split(client: anthropic.Anthropic, clock: Clock) -> None:
    tools: Any = [
        {"name": "t", "description": " ".join(["d"] * 1500), "input_schema": {"type": "object"}}
    ]
    system = [text(500, cache_control={"type": "ephemeral", "ttl": "1h"})]
    messages = marked(conversation(3), 3)
    message = client.messages.create(
        model=MODEL, max_tokens=10, tools=tools, system=system, messages=messages
    )
    created = message.usage.cache_creation
    assert created is not None
    assert (created.ephemeral_1h_input_tokens, created.ephemeral_5m_input_tokens) == (2000, 300)
    assert message.usage.cache_creation_input_tokens == 2300
    clock.now += 1800
    # The conversation's 5-minute entry is gone; the hour-long one is read.
    assert usage(client, tools=tools, system=system, messages=messages) == (300, 2000, 0)


def test_a_one_hour_breakpoint_may_not_follow_a_five_minute_one(
    client: anthropic.Anthropic,
) -> None:
    system = [
        text(10, cache_control=EPHEMERAL),
        text(10, cache_control={"type": "ephemeral", "ttl": "1h"}),
    ]
    with pytest.raises(anthropic.BadRequestError, match="ttl='1h'"):
        usage(client, system=system)


def test_tool_choice_keeps_the_system_entry_but_not_the_messages(
    client: anthropic.Anthropic,
) -> None:
    tools: Any = [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]
    system = [text(1500, cache_control=EPHEMERAL)]
    messages = marked(conversation(20), 20)
    assert usage(client, tools=tools, system=system, messages=messages) == (3501, 0, 0)
    changed = usage(
        client, tools=tools, system=system, messages=messages, tool_choice={"type": "any"}
    )
    assert changed == (2000, 1501, 0)


def test_entries_are_per_model(client: anthropic.Anthropic) -> None:
    system = [text(2500, cache_control=EPHEMERAL)]
    usage(client, system=system)
    assert usage(client, system=system, model="claude-opus-4-1") == (2500, 0, 3)


def test_an_error_reply_writes_nothing(cache: PromptCache) -> None:
    from aether_llm import ApiError

    server = MessagesServer(lambda request: ApiError(529, "overloaded_error", "busy"))
    server.cache = cache
    server.start()
    try:
        sdk = anthropic.Anthropic(api_key="t", base_url=server.url, max_retries=0)
        with pytest.raises(anthropic.APIStatusError):
            usage(sdk, system=[text(2000, cache_control=EPHEMERAL)])
    finally:
        server.stop()
    assert cache.entries() == 0


def test_the_default_count_is_about_four_characters_a_token() -> None:
    assert approximate_tokens({"type": "text", "text": "x" * 4000}) == 1007
    assert (
        approximate_tokens({"type": "text", "text": "x" * 4000, "cache_control": EPHEMERAL}) == 1007
    )
