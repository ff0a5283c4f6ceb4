"""The adapter manifest (`hotswap.json`): identity, provenance and the task an adapter serves.

Training writes it beside the PEFT files; the registry completes it (version, digest, base
fingerprint, LoRA shape, creation time) and stores it. Serving frames every input with
`TaskSpec.render_messages`, the same function training used, so prompts match exactly.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, TypedDict

import jsonschema
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from adapters.json_input import json_problem

MANIFEST_FILE = "hotswap.json"
INPUT_PLACEHOLDER = "{input}"
MAX_VERSION = 2**31 - 1
"""The highest version number: versions are 32-bit signed integers in the database and gRPC."""
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_adapter_name(name: str) -> str:
    """Return `name` if it is a valid adapter name, else raise ValueError saying why."""
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"adapter name {name!r} is invalid: use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit ('@' separates a name from a version)"
        )
    return name


AdapterName = Annotated[str, AfterValidator(check_adapter_name)]


def _check_json(value: dict[str, Any]) -> dict[str, Any]:
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(f"the value {problem}")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
"""A free-form JSON object: finite numbers, bounded depth."""
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ChatMessage(TypedDict):
    """One chat message, in the shape chat templates and the OpenAI API take."""

    role: str
    content: str


class LoraSpec(BaseModel):
    """The LoRA shape, copied from `adapter_config.json` by the registry."""

    model_config = _MODEL_CONFIG

    rank: int = Field(gt=0)
    alpha: float
    target_modules: list[str]


class TrainingInfo(BaseModel):
    """Where the adapter came from: evaluation metrics, data and knobs of its training run."""

    model_config = _MODEL_CONFIG

    metrics: dict[str, float] = Field(default_factory=dict)
    dataset_digest: str | None = None
    hyperparameters: JsonObject = Field(default_factory=dict)


class Calibration(BaseModel):
    """How a classification task's label probabilities are read (`adapters.label_trie`), or a
    multi-label task's (`adapters.label_sets`: the temperature only): written by `hotswap
    train` from held-out data."""

    model_config = _MODEL_CONFIG

    temperature: float = Field(
        default=1.0,
        gt=0.01,
        le=100.0,
        description="Divides the log-probabilities at each branching point of the label trie "
        "(temperature scaling, fitted on the validation split).",
    )
    abstain_below: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Answers less confident than this abstain (a request may set its own).",
    )
    predicted_distribution: dict[str, float] | None = Field(
        default=None,
        description="The adapter's predicted label frequencies on held-out data: the drift "
        "baseline, so a weak but stable adapter does not alarm.",
    )
    mean_confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Mean confidence on held-out data."
    )


class TaskSpec(BaseModel):
    """How inputs are framed and what outputs look like for this adapter's task."""

    model_config = _MODEL_CONFIG

    system_message: str | None = None
    input_template: str = Field(
        default=INPUT_PLACEHOLDER,
        description="User message text; the literal `{input}` is replaced by the request input.",
    )
    output_schema: JsonObject | None = Field(
        default=None, description="JSON Schema the output must satisfy (constrained decoding)."
    )
    labels: list[str] | None = Field(default=None, description="Closed set of output labels.")
    label_field: str | None = Field(
        default=None, description="Output field that carries the label, e.g. 'intent'."
    )
    reference_distribution: dict[str, float] | None = Field(
        default=None, description="Expected label frequencies (drift baseline), summing to 1."
    )
    calibration: Calibration | None = Field(
        default=None, description="Label probabilities of a classification task."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> TaskSpec:
        if INPUT_PLACEHOLDER not in self.input_template:
            raise ValueError(f"input_template must contain {INPUT_PLACEHOLDER}")
        if self.output_schema is not None:
            validator = jsonschema.validators.validator_for(self.output_schema)
            try:
                validator.check_schema(self.output_schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(
                    f"output_schema is not a valid JSON Schema: {exc.message}"
                ) from exc
        if self.labels is not None and (
            not self.labels or len(set(self.labels)) != len(self.labels)
        ):
            raise ValueError("labels must be a non-empty list without duplicates")
        if self.label_field is not None:
            self._check_label_field(self.label_field)
        if self.reference_distribution is not None:
            self._check_distribution("reference_distribution", self.reference_distribution)
        predicted = self.calibration.predicted_distribution if self.calibration else None
        if predicted is not None:
            self._check_distribution("calibration.predicted_distribution", predicted)
        return self

    @property
    def label_temperature(self) -> float:
        """The temperature the label probabilities are scaled by: the calibration's, else 1."""
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def drift_reference(self) -> dict[str, float] | None:
        """The label distribution live predictions are compared with: the adapter's own
        predictions on held-out data when training recorded them, else the labels'."""
        predicted = self.calibration.predicted_distribution if self.calibration else None
        return predicted or self.reference_distribution

    def _check_label_field(self, field: str) -> None:
        if self.labels is None:
            raise ValueError("label_field needs labels")
        properties = (self.output_schema or {}).get("properties")
        if isinstance(properties, dict) and field not in properties:
            raise ValueError(f"label_field {field!r} is not a property of output_schema")

    def _check_distribution(self, name: str, distribution: dict[str, float]) -> None:
        if self.labels is None or set(distribution) != set(self.labels):
            raise ValueError(f"{name} must have exactly one entry per label")
        if any(p < 0 for p in distribution.values()):
            raise ValueError(f"{name} has a negative probability")
        if not math.isclose(sum(distribution.values()), 1.0, rel_tol=0.0, abs_tol=1e-6):
            raise ValueError(f"{name} must sum to 1")

    def render_messages(self, text: str) -> list[ChatMessage]:
        """The chat messages for one input: the system message (if any), then the user turn."""
        messages: list[ChatMessage] = []
        if self.system_message is not None:
            messages.append({"role": "system", "content": self.system_message})
        user = self.input_template.replace(INPUT_PLACEHOLDER, text)
        messages.append({"role": "user", "content": user})
        return messages


class AdapterManifest(BaseModel):
    """`hotswap.json`. In an upload only `name` (or a name given to the registry) is needed;
    `version`, `digest`, `lora` and `created_at` are assigned by the registry, and `base_model`
    is checked against the served model's fingerprint when present, else filled in."""

    model_config = _MODEL_CONFIG

    name: AdapterName
    version: int | None = Field(default=None, gt=0, le=MAX_VERSION)
    digest: str | None = Field(default=None, description="sha256 of the PEFT files (hex).")
    base_model: str | None = Field(default=None, description="Base fingerprint, 'sha256:...'.")
    lora: LoraSpec | None = None
    task: TaskSpec = Field(default_factory=TaskSpec)
    training: TrainingInfo | None = None
    description: str = ""
    created_at: datetime | None = None
