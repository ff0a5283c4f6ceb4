"""instructor 1.17 through the real server: each mode returns the parsed model."""

from __future__ import annotations

import instructor
import pytest
from openai import OpenAI

from tests.clients.extraction import MESSAGES, Person, assert_person, token_limit

pytestmark = pytest.mark.engine

MODES = (
    instructor.Mode.TOOLS,
    instructor.Mode.JSON_SCHEMA,
    instructor.Mode.JSON,
    instructor.Mode.MD_JSON,
)


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_instructor_mode_returns_the_parsed_model(
    openai_client: OpenAI, base_model: str, mode: instructor.Mode, max_tokens: int | None
) -> None:
    client = instructor.from_openai(openai_client, mode=mode)
    person, completion = client.chat.completions.create_with_completion(
        model=base_model,
        response_model=Person,
        messages=MESSAGES,  # type: ignore[arg-type]
        temperature=0,
        max_retries=1,  # one attempt: a failure fails here, not after re-asks
        **token_limit(max_tokens),
    )
    assert_person(person)
    message = completion.choices[0].message
    if mode is instructor.Mode.TOOLS:  # the object came as a tool call, not as text
        assert message.tool_calls and message.tool_calls[0].function.name == "Person"
    else:
        assert message.content and not message.tool_calls
    if max_tokens is not None:
        assert completion.usage is not None and completion.usage.completion_tokens <= max_tokens
