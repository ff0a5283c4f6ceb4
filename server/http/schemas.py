"""Request bodies of the OpenAI routes and the task call's response (other responses reuse
the `openai` package's own models). The task call's request, chat messages and the sampling
fields' limits are shared with gRPC: `server/task_request.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from server.task_request import (
    MAX_MODEL_REF_CHARS,
    MAX_STOPS,
    MAX_TOKENS_FIELD,
    SEED_FIELD,
    TEMPERATURE_FIELD,
    TOP_P_FIELD,
    ChatMessages,
    Stop,
)


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    json_schema: Annotated[dict[str, Any], Field(alias="schema")]
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs `json_schema.schema`")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI request fields that change nothing hotswap computes: accepted and ignored.
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}
)
# Fields hotswap does not honour (yet), with the values that ask for nothing: those are
# accepted; any other value is refused by name rather than silently ignored.
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False),  # says nothing without tools
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
}


class _SamplingFields(BaseModel):
    """Knobs shared by the OpenAI routes. Every field is honoured or refused by name: the
    harmless `IGNORED_FIELDS` pass, the `NO_OP_VALUES` of fields not honoured pass, and any
    other field (or value) is a 422 naming it."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=MAX_MODEL_REF_CHARS)
    max_tokens: int | None = MAX_TOKENS_FIELD
    temperature: float = TEMPERATURE_FIELD
    top_p: float = TOP_P_FIELD
    n: Literal[1] = Field(default=1, description="Only one choice per request is supported.")
    seed: int | None = SEED_FIELD
    stop: Stop | None = Field(
        default=None, description=f"Up to {MAX_STOPS} strings that end the text when generated."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _refuse_unhonoured(self) -> Self:
        refused = sorted(
            name
            for name, value in (self.model_extra or {}).items()
            if name not in IGNORED_FIELDS and value not in NO_OP_VALUES.get(name, ())
        )
        if refused:
            shown = ", ".join(f"`{name[:64]}`" for name in refused[:8])
            raise ValueError(
                f"hotswap does not support {shown}{' ...' if len(refused) > 8 else ''} "
                "(see docs/openai-compat.md): remove it, or send the value that asks for nothing"
            )
        return self

    def stop_list(self) -> list[str]:
        return list(self.stop or ())


class ChatCompletionRequest(_SamplingFields):
    messages: ChatMessages
    max_completion_tokens: int | None = MAX_TOKENS_FIELD
    response_format: ResponseFormat | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def output_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.json_schema is None:
            return None
        return fmt.json_schema.json_schema


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class AdapterRef(BaseModel):
    name: str
    version: int | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    text: str
    output: Any = Field(description="The parsed JSON document when a schema applies.")
    valid: bool | None = Field(description="Whether `output` validates; null without schema.")
    finish_reason: str | None
    usage: Usage
    adapter: AdapterRef
