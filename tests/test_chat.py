"""Chat rendering and content spans: decoding each span gives back the message content."""

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.models.chat import ChatFormat
from support.tiny_models import styled_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a lighthouse keeper on a remote island."},
    {"role": "user", "content": "What do you do when a storm comes?"},
    {"role": "assistant", "content": "I trim the wick, wind the clockwork, and keep watch."},
    {"role": "user", "content": "assistant"},  # a content equal to a role name
    {"role": "assistant", "content": "Then I write the night into the log book."},
]


def decoded(chat: ChatFormat, messages: list[dict[str, str]], **kwargs: bool) -> list[str]:
    rendered = chat.render(messages, **kwargs)
    return [chat.tokenizer.decode(rendered.input_ids[s.start : s.end]) for s in rendered.spans]


@pytest.mark.parametrize("style", ["chatml", "llama3", "qwen3", "gemma2"])
def test_each_span_decodes_to_its_content(style: str) -> None:
    chat = ChatFormat(styled_tokenizer(style))
    assert decoded(chat, CONVERSATION) == [m["content"] for m in CONVERSATION]


@pytest.mark.parametrize("style", ["chatml", "llama3", "qwen3", "gemma2"])
def test_spans_exclude_headers_and_end_of_turn_tokens(style: str) -> None:
    chat = ChatFormat(styled_tokenizer(style))
    rendered = chat.render(CONVERSATION)
    special = set(chat.tokenizer.all_special_ids)
    for span in rendered.spans:
        assert not special & set(rendered.input_ids[span.start : span.end])
        # the token right after a span is the template's, not content
        assert span.end < len(rendered.input_ids)
    starts = [s.start for s in rendered.spans]
    assert starts == sorted(starts)


def test_system_role_detection_and_folding() -> None:
    gemma = ChatFormat(styled_tokenizer("gemma2"))
    assert not gemma.supports_system
    assert ChatFormat(styled_tokenizer("llama3")).supports_system
    rendered = gemma.render(CONVERSATION[:3])
    system, user = rendered.spans[0], rendered.spans[1]
    # both live in the first (folded) user turn: system text, the separator, then the question
    assert system.end <= user.start
    assert "<start_of_turn>system" not in rendered.text
    assert rendered.text.count("<start_of_turn>user") == 1
    assert CONVERSATION[0]["content"] + "\n\n" + CONVERSATION[1]["content"] in rendered.text


def test_thinking_switch_is_detected_and_turned_off() -> None:
    qwen = ChatFormat(styled_tokenizer("qwen3"))
    assert qwen.thinking_switch
    assert not ChatFormat(styled_tokenizer("chatml")).thinking_switch
    prompt = qwen.render(CONVERSATION[:2], add_generation_prompt=True)
    assert prompt.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_think_block_is_not_part_of_the_assistant_span() -> None:
    qwen = ChatFormat(styled_tokenizer("qwen3"))
    messages = [
        {"role": "user", "content": "Is seven prime?"},
        {
            "role": "assistant",
            "content": "<think>\nIt has no divisors but 1 and 7.\n</think>\n\nYes.",
        },
    ]
    rendered = qwen.render(messages)
    assert "It has no divisors" in rendered.text
    span = rendered.role_spans("assistant")[0]
    assert qwen.tokenizer.decode(rendered.input_ids[span.start : span.end]) == "Yes."


def test_code_blocks_can_be_excluded_from_the_pooled_segments() -> None:
    chat = ChatFormat(styled_tokenizer("chatml"))
    content = (
        "Use a loop:\n```python\nfor i in range(3):\n    print(i)\n```\nThat prints three lines."
    )
    messages = [{"role": "user", "content": "How?"}, {"role": "assistant", "content": content}]
    span = chat.render(messages, exclude_code=True).spans[1]
    ids = chat.render(messages).input_ids
    pieces = [chat.tokenizer.decode(ids[a:b]) for a, b in span.segments]
    assert len(pieces) == 2
    assert "range(3)" not in "".join(pieces) and "```" not in "".join(pieces)
    assert pieces[0].startswith("Use a loop:") and pieces[1].endswith("three lines.")
    whole = chat.render(messages).spans[1]
    assert whole.segments == ((whole.start, whole.end),) and span.n_tokens < whole.n_tokens


@pytest.mark.slow
def test_smollm2_spans_and_generation_prompt(smollm) -> None:
    chat = smollm.chat
    assert chat.supports_system and not chat.thinking_switch
    assert decoded(chat, CONVERSATION) == [m["content"] for m in CONVERSATION]
    prompt = chat.render(CONVERSATION[:2], add_generation_prompt=True)
    assert prompt.text.endswith("<|im_start|>assistant\n")
    # the prompt is a prefix of the rendering with the answer, so generated tokens line up
    full = chat.render(CONVERSATION[:3])
    assert full.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert full.spans[2].start == len(prompt.input_ids)


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "empty"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": None}], "must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "first message"),
        (["hello"], "not an object"),
    ],
)
def test_bad_messages_get_clear_errors(messages: list, message: str) -> None:
    chat = ChatFormat(styled_tokenizer("chatml"))
    with pytest.raises(PersonaAxisError, match=message):
        chat.render(messages)


def test_template_errors_become_user_errors() -> None:
    gemma = ChatFormat(styled_tokenizer("gemma2"))
    with pytest.raises(PersonaAxisError, match="refused"):
        gemma.render([{"role": "assistant", "content": "I speak first."}])
