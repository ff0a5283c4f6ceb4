"""Request bodies of the HTTP API (responses reuse the `openai` package's own models). The
task call's gRPC message is checked with `GenerateRequest` too, so every limit here holds for
both transports. Limits that depend on settings (the prompt's length) are the domain's
(`server/generation.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from server.engine import MAX_SEED

MAX_TOKENS = 1_000_000  # far above any context; the context check is the domain's
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARS = 256
MAX_MESSAGES = 256
MAX_CONTENT_PARTS = 256
MAX_MODEL_REF_CHARS = 200

MAX_TOKENS_FIELD = Field(
    default=None, gt=0, le=MAX_TOKENS, description="Tokens to generate at most."
)
TEMPERATURE_FIELD = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
TOP_P_FIELD = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
SEED_FIELD = Field(default=None, ge=0, le=MAX_SEED, description="Sampling seed, 0 to 2**63 - 1.")

StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
StopStrings = Annotated[list[StopString], Field(max_length=MAX_STOPS)]


def _one_or_many(value: Any) -> Any:
    """One stop string is a list of one (OpenAI accepts both)."""
    return [value] if isinstance(value, str) else value


Stop = Annotated[
    StopStrings,
    BeforeValidator(_one_or_many, json_schema_input_type=StopString | StopStrings),
]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)]

    def as_dict(self) -> dict[str, str]:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        # The chat templates of open models know no `developer` role: it is the system one.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


ChatMessages = Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]


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


class GenerateRequest(BaseModel):
    """The task call: an adapter, an input, optionally a JSON Schema for the output."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(
        default=None, max_length=MAX_MODEL_REF_CHARS, description="Adapter name; omitted: the base."
    )
    input: str | ChatMessages = Field(description="Text, or chat messages.")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    max_tokens: int | None = MAX_TOKENS_FIELD
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 is greedy."
    )
    top_p: float = TOP_P_FIELD
    seed: int | None = SEED_FIELD


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
