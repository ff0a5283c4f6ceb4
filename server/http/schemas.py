"""Request bodies of the OpenAI routes and the task call's response (other responses reuse
the `openai` package's own models). The task call's request, chat messages and the sampling
fields' limits are shared with gRPC: `server/task_request.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from openai.types.chat import ChatCompletionTokenLogprob
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
    MAX_TOP_LOGPROBS,
    N_FIELD,
    SEED_FIELD,
    TEMPERATURE_FIELD,
    TOP_LOGPROBS_FIELD,
    TOP_P_FIELD,
    ChatMessages,
    Stop,
    logprobs_count,
)
from server.tool_calls.spec import (
    MAX_PARALLEL_TOOL_CALLS,
    MAX_TOOLS,
    ToolChoice,
    ToolPlan,
    Tools,
    plan_tools,
)


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    description: str | None = None
    json_schema: Annotated[dict[str, Any], Field(alias="schema")]
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_schema", "json_object"]
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
    "functions": (None, []),  # deprecated by OpenAI for `tools`
    "function_call": (None, "none"),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
}


# Request limits of the OpenAI routes (OpenAI's own where it has one).
MAX_PROMPTS = 16
MAX_LOGIT_BIAS = 300  # OpenAI's
MAX_BIAS = 100
PENALTY_FIELD = Field(default=None, ge=-2.0, le=2.0, allow_inf_nan=False)


class _SamplingFields(BaseModel):
    """Knobs shared by the OpenAI routes. Every field is honoured or refused by name: the
    harmless `IGNORED_FIELDS` pass, the `NO_OP_VALUES` of fields not honoured pass, and any
    other field (or value) is a 422 naming it."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(max_length=MAX_MODEL_REF_CHARS)
    max_tokens: int | None = MAX_TOKENS_FIELD
    temperature: float = TEMPERATURE_FIELD
    top_p: float = TOP_P_FIELD
    n: int = N_FIELD
    presence_penalty: float | None = PENALTY_FIELD
    frequency_penalty: float | None = PENALTY_FIELD
    logit_bias: dict[str, float] | None = Field(
        default=None,
        max_length=MAX_LOGIT_BIAS,
        description=f"Token id -> bias added to its logit ({-MAX_BIAS} to {MAX_BIAS}); at most "
        f"{MAX_LOGIT_BIAS} entries.",
    )
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

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdecimal() or len(key) > 12:
                raise ValueError(f"keys are token ids (integers >= 0), not {key[:20]!r}")
            if not -MAX_BIAS <= bias <= MAX_BIAS:
                raise ValueError(f"biases are {-MAX_BIAS} to {MAX_BIAS}, not {bias}")
        return value

    def stop_list(self) -> list[str]:
        return list(self.stop or ())

    def bias(self) -> dict[int, float]:
        """`logit_bias` keyed by token id (checked against the vocabulary by the domain)."""
        return {int(key): bias for key, bias in (self.logit_bias or {}).items()}


class ChatCompletionRequest(_SamplingFields):
    messages: ChatMessages
    max_completion_tokens: int | None = MAX_TOKENS_FIELD
    response_format: ResponseFormat | None = None
    tools: Tools | None = Field(default=None, description=f"At most {MAX_TOOLS} functions.")
    tool_choice: ToolChoice | None = Field(
        default=None, description="`none`, `auto` (the default with tools), `required` or a name."
    )
    parallel_tool_calls: bool | None = Field(
        default=None,
        description=f"Whether an answer may hold several calls (up to {MAX_PARALLEL_TOOL_CALLS}).",
    )

    @model_validator(mode="after")
    def _plan_tools(self) -> Self:
        plan = self.tool_plan()
        fmt = self.response_format
        if plan is not None and self.n != 1:
            raise ValueError("`n` above 1 is not supported with tools: send `n: 1`")
        if plan is not None and self.logprobs:
            raise ValueError("`logprobs` is not supported with tools: send `logprobs: false`")
        if plan is not None and fmt is not None and fmt.type != "text":
            raise ValueError(
                "`response_format` cannot constrain an answer that may be a tool call: send "
                "`tool_choice: none` or drop `response_format`"
            )
        return self

    def tool_plan(self) -> ToolPlan | None:
        """The tools the model may call; None when it may call none. Raises ValueError naming
        the field the tools or the choice break."""
        return plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    logprobs: bool | None = None
    top_logprobs: int | None = TOP_LOGPROBS_FIELD

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> Self:
        logprobs_count(self.logprobs, self.top_logprobs)
        return self

    def logprobs_count(self) -> int | None:
        """None: no log-probabilities; k: each token's and its k most likely alternatives."""
        return logprobs_count(self.logprobs, self.top_logprobs)

    def json_object(self) -> bool:
        return self.response_format is not None and self.response_format.type == "json_object"

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def output_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt is None or fmt.json_schema is None:
            return None
        return fmt.json_schema.json_schema


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    ) = Field(
        description=f"A string, token ids, or a list of up to {MAX_PROMPTS} of either (n times "
        "their number is at most the server's `max_n`)."
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Each token's log-probability and this many most likely alternatives.",
    )

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each text or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(item, int) for item in prompt):
            return [[int(item) for item in prompt]]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class AdapterRef(BaseModel):
    name: str
    version: int | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LabelProbability(BaseModel):
    label: str
    probability: float


class GenerateChoice(BaseModel):
    index: int
    text: str
    output: Any = Field(
        description="The parsed JSON document when a schema applies; null when it abstained."
    )
    valid: bool | None = Field(description="Whether `output` validates; null without schema.")
    finish_reason: str | None
    logprobs: list[ChatCompletionTokenLogprob] | None = Field(
        default=None, description="Each token's log-probability (OpenAI chat's shape)."
    )
    confidence: float | None = Field(
        default=None,
        description="Of a classification task: the calibrated probability of the answered "
        "label (null for other tasks, a multi-label task included, or a label too improbable "
        "to be scored).",
    )
    top_labels: list[LabelProbability] | None = Field(
        default=None,
        description="Of a classification task: the most probable labels, most probable first.",
    )
    abstained: bool | None = Field(
        default=None,
        description="Of a classification task: true when the confidence is below the "
        "threshold (`abstain_below`); `output` is then null and `top_labels` say what it "
        "hesitated between. Null for other tasks, a multi-label task included.",
    )
    label_probabilities: list[LabelProbability] | None = Field(
        default=None,
        description="Of a multi-label task (its schema one array of its labels): the "
        "`top_labels` labels most probably in the answer's set, most probable first, each "
        "with its own calibrated probability of being in the set under the adapter. They do "
        "not sum to 1; labels less probable than the search's floor are left out. Null for "
        "other tasks.",
    )
    empty_set_probability: float | None = Field(
        default=None,
        description="Of a multi-label task: the calibrated probability that the answer's set "
        "is empty (0 when the schema requires an item). Null for other tasks.",
    )


class GenerateResponse(GenerateChoice):
    """The first choice's fields, every choice in `choices` (one unless `n` > 1), and the usage
    of all of them."""

    choices: list[GenerateChoice]
    usage: Usage
    adapter: AdapterRef
    grammar_engine: str | None = Field(
        default=None,
        description="The grammar engine that decoded the output (outlines, or the fallback "
        "guidance or xgrammar for a schema outlines cannot compile); null without a schema.",
    )
