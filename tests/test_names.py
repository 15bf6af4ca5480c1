"""vtune._names: names that become file names are plain names."""

from __future__ import annotations

import pytest

from vtune._errors import VtuneError
from vtune._names import MAX_NAME_LENGTH, check_name, clean_name


@pytest.mark.parametrize("name", ["llama8b", "Qwen3-8B-chatbot", "a.b_c-d", "x", "..x", "a" * MAX_NAME_LENGTH])
def test_plain_names_pass_unchanged(name: str) -> None:
    assert check_name(name, "--study") == name


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("../evil", "a path"),
        ("team/x", "a path"),
        ("/abs", "a path"),
        ("a\\b", "a path"),
        ("..", "folder reference"),
        (".", "folder reference"),
        ("", "empty"),
        ("a b", "' '"),
        ("x;rm", "';'"),
        ("caf\u00e9", "\u00e9"),
        ("a" * (MAX_NAME_LENGTH + 1), f"at most {MAX_NAME_LENGTH}"),
    ],
)
def test_other_names_fail_with_one_line_naming_the_flag(name: str, needle: str) -> None:
    with pytest.raises(VtuneError) as info:
        check_name(name, "--study")
    message = str(info.value)
    assert message.startswith("--study")
    assert needle in message
    assert "\n" not in message
    assert "letters, digits" in message or "shorter" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Llama-3.1-8B-chatbot", "Llama-3.1-8B-chatbot"),
        ("My Model (v2)-chatbot", "My-Model-v2--chatbot"),
        ("..-chatbot", "chatbot"),
        (".hidden", "hidden"),
        ("team/x", "team-x"),
        ("///", "study"),
        ("", "study"),
    ],
)
def test_clean_name(text: str, expected: str) -> None:
    assert clean_name(text) == expected


def test_clean_name_cuts_long_text() -> None:
    name = clean_name("m" * 300 + "-chatbot")
    assert len(name) == MAX_NAME_LENGTH and check_name(name, "x") == name
