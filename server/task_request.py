"""The request fields both transports check: the task call (`GenerateRequest`, the body of
`POST /v1/generate` and the gRPC `GenerateRequest` message alike), chat messages, and the
limits of the sampling fields, which the OpenAI bodies (`server/http/schemas.py`) reuse.
Limits that depend on settings (the prompt's length) are the domain's
(`server/generation.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from server.engine import MAX_SEED
from server.label_scores import DEFAULT_TOP_LABELS, MAX_TOP_LABELS
from server.tool_calls.spec import MAX_TOOL_CALL_ID_CHARS, HistoryToolCalls

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
N_FIELD = Field(default=1, ge=1, description="Choices to generate; at most the server's `max_n`.")
MAX_TOP_LOGPROBS = 20  # OpenAI's top_logprobs maximum, and vLLM's default max_logprobs
TOP_LOGPROBS_FIELD = Field(
    default=None,
    ge=0,
    le=MAX_TOP_LOGPROBS,
    description="With `logprobs`, this many most likely alternatives of each token.",
)


def logprobs_count(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """The domain's `logprobs`: None for none, else how many alternatives per token. Raises
    ValueError when `top_logprobs` is asked for without `logprobs` (as OpenAI does)."""
    if top_logprobs and not logprobs:
        raise ValueError("`top_logprobs` needs `logprobs: true`")
    return (top_logprobs or 0) if logprobs else None


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
    """A message of the conversation. An assistant message may hold `tool_calls` (its content
    then may be null); a `tool` message answers one call, named by `tool_call_id`."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    tool_calls: HistoryToolCalls | None = None
    tool_call_id: str | None = Field(
        default=None, max_length=MAX_TOOL_CALL_ID_CHARS, validate_default=True
    )

    @field_validator("tool_call_id")
    @classmethod
    def _tool_fields_fit_the_role(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked on the last field (the others are in `info.data`), not on the model: a
        model validator would rename the model in every error's location."""
        role, tool_calls = info.data.get("role"), info.data.get("tool_calls")
        if tool_calls and role != "assistant":
            raise ValueError("only an assistant message may hold `tool_calls`")
        if (role == "tool") != (value is not None):
            raise ValueError("a `tool` message, and only one, needs a `tool_call_id`")
        if "content" in info.data and info.data["content"] is None and not tool_calls:
            raise ValueError("`content` may be null only in an assistant message with `tool_calls`")
        return value

    def as_dict(self) -> dict[str, object]:
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        # The chat templates of open models know no `developer` role: it is the system one.
        message: dict[str, object] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": text,
        }
        if self.tool_calls:
            message["tool_calls"] = [call.as_dict() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


ChatMessages = Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]


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
    n: int = N_FIELD
    logprobs: bool = Field(default=False, description="Return each token's log-probability.")
    top_logprobs: int | None = TOP_LOGPROBS_FIELD
    top_labels: int = Field(
        default=DEFAULT_TOP_LABELS,
        ge=1,
        le=MAX_TOP_LABELS,
        description="Of a classification task: how many of the most probable labels to return.",
    )
    abstain_below: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Of a classification task: abstain below this confidence (unset: the "
        "adapter's manifest's `calibration.abstain_below`, if any).",
    )

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> Self:
        logprobs_count(self.logprobs, self.top_logprobs)
        return self
