"""The request fields both transports check: the task call (`GenerateRequest`, the body of
`POST /v1/generate` and the gRPC `GenerateRequest` message alike), chat messages, and the
limits of the sampling fields, which the OpenAI bodies (`server/http/schemas.py`) reuse.
Limits that depend on settings (the prompt's length) are the domain's
(`server/generation.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

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
