"""Request bodies of the HTTP API (responses reuse the `openai` package's own models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOKENS_FIELD = Field(default=None, gt=0, description="Tokens to generate at most.")
TEMPERATURE_FIELD = Field(default=1.0, ge=0.0, le=2.0)
TOP_P_FIELD = Field(default=1.0, gt=0.0, le=1.0)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        # The chat templates of open models know no `developer` role: it is the system one.
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


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


class _SamplingFields(BaseModel):
    """Knobs shared by the OpenAI routes. Unknown fields are ignored, as OpenAI SDKs send
    optional ones freely; fields hotswap cannot honour are refused by name."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = MAX_TOKENS_FIELD
    temperature: float = TEMPERATURE_FIELD
    top_p: float = TOP_P_FIELD
    n: Literal[1] = Field(default=1, description="Only one choice per request is supported.")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
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

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class GenerateRequest(BaseModel):
    """The task call: an adapter, an input, optionally a JSON Schema for the output."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, description="Adapter name; omitted: the base.")
    input: str | list[ChatMessage] = Field(description="Text, or chat messages.")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    max_tokens: int | None = MAX_TOKENS_FIELD
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = TOP_P_FIELD
    seed: int | None = None


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
