"""`hotswap.v1.Inference`: the task call, unary and streamed, on the same domain calls as
`POST /v1/generate` (`server/generation.py`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any, NoReturn

from google.protobuf.struct_pb2 import Struct

from server.auth import Role
from server.engine import TokenLogprob
from server.errors import InvalidRequest
from server.generation import (
    GRAMMAR_ENGINE_HEADER,
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    version_headers,
)
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import inference_pb2_grpc
from server.grpc_api.guard import GuardedServicer, guarded
from server.grpc_api.structs import from_struct, to_struct
from server.requests import generation_request, parse_generate

_KNOBS = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "n",
    "top_logprobs",
    "top_labels",
    "abstain_below",
)


class InferenceServicer(inference_pb2_grpc.InferenceServicer, GuardedServicer):
    @guarded(Role.INFER)
    async def Generate(  # noqa: N802 (gRPC method name)
        self, request: pb.GenerateRequest, context: Any
    ) -> pb.GenerateResponse:
        generation = self.ready().generation
        prepared = await generation.prepare(await _domain_request(request))
        await _send_metadata(context, prepared)
        results = await generation.complete(prepared, _request_id())
        return response(results, prepared.grammar_engine)

    @guarded(Role.INFER)
    async def GenerateStream(  # noqa: N802 (gRPC method name)
        self, request: pb.GenerateRequest, context: Any
    ) -> None:
        generation = self.ready().generation
        prepared = await generation.prepare(await _domain_request(request))
        await _send_metadata(context, prepared)
        results: list[GenerationResult] = []
        stream = generation.stream(prepared, _request_id(), results)
        # Closed at once when the call is cancelled, which aborts the request in the engine.
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                if chunk.text or chunk.logprobs:
                    await context.write(
                        pb.GenerateStreamResponse(
                            delta=chunk.text, index=chunk.index, logprobs=_logprobs(chunk.logprobs)
                        )
                    )
        summary = response(results, prepared.grammar_engine)
        await context.write(pb.GenerateStreamResponse(summary=summary))


async def _send_metadata(context: Any, prepared: PreparedRequest) -> None:
    """Initial metadata naming the adapter version that answers (`x-hotswap-adapter-version`,
    under a rollout too) and the grammar engine of a constrained answer
    (`x-hotswap-grammar-engine`), as the HTTP routes' headers do."""
    metadata = version_headers(prepared.model)
    if prepared.grammar_engine is not None:
        metadata[GRAMMAR_ENGINE_HEADER] = prepared.grammar_engine
    if metadata:
        await context.send_initial_metadata(tuple(metadata.items()))


async def _domain_request(message: pb.GenerateRequest) -> GenerationRequest:
    """`domain_request` off the event loop: reading a schema of a few MB takes 0.5 s."""
    return await asyncio.to_thread(domain_request, message)


def domain_request(message: pb.GenerateRequest) -> GenerationRequest:
    """A `GenerateRequest` message checked with the HTTP API's rules and defaults."""
    fields: dict[str, Any] = {}
    if message.HasField("adapter"):
        fields["adapter"] = message.adapter
    match message.WhichOneof("input"):
        case "text":
            fields["input"] = message.text
        case "messages":
            fields["input"] = [
                {"role": m.role, "content": m.content} for m in message.messages.messages
            ]
        case _:
            raise InvalidRequest("The request has no input: set `text` or `messages`.")
    match message.WhichOneof("schema"):
        case "schema_json":
            fields["schema"] = _json(message.schema_json, "schema_json")
        case "schema_struct":
            fields["schema"] = _struct(message.schema_struct, "schema_struct")
    fields.update({knob: getattr(message, knob) for knob in _KNOBS if message.HasField(knob)})
    fields["logprobs"] = message.logprobs
    return generation_request(parse_generate(fields), protocol="grpc")


def response(
    results: list[GenerationResult], grammar_engine: str | None = None
) -> pb.GenerateResponse:
    """The summary of a run: the first choice's fields, every choice, the usage of all, and
    the grammar engine that decoded it."""
    choices = [_choice(result) for result in results]
    first, model = choices[0], results[0].model
    prompt_tokens = results[0].prompt_tokens
    completion_tokens = sum(result.completion_tokens for result in results)
    message = pb.GenerateResponse(
        text=first.text,
        usage=pb.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        adapter=pb.AdapterRef(name=model.name),
        logprobs=first.logprobs,
        choices=choices,
        top_labels=first.top_labels,
        label_probabilities=first.label_probabilities,
    )
    if model.version is not None:
        message.adapter.version = model.version
    if grammar_engine is not None:
        message.grammar_engine = grammar_engine
    if first.HasField("finish_reason"):
        message.finish_reason = first.finish_reason
    if first.HasField("valid"):
        message.valid = first.valid
    if first.HasField("confidence"):
        message.confidence = first.confidence
    if first.HasField("abstained"):
        message.abstained = first.abstained
    if first.HasField("empty_set_probability"):
        message.empty_set_probability = first.empty_set_probability
    match first.WhichOneof("output"):
        case "output_struct":
            message.output_struct.CopyFrom(first.output_struct)
        case "output_json":
            message.output_json = first.output_json
    return message


def _choice(result: GenerationResult) -> pb.Choice:
    choice = pb.Choice(index=result.index, text=result.text, logprobs=_logprobs(result.logprobs))
    if result.finish_reason is not None:
        choice.finish_reason = result.finish_reason
    if result.valid is not None:
        choice.valid = result.valid
    if isinstance(result.output, dict):
        choice.output_struct.CopyFrom(to_struct(result.output))
    elif result.output is not None:
        choice.output_json = json.dumps(result.output)
    if result.label is not None:
        if result.label.confidence is not None:
            choice.confidence = result.label.confidence
        choice.abstained = result.label.abstained
        choice.top_labels.extend(
            pb.LabelProbability(label=label, probability=p) for label, p in result.label.top_labels
        )
    if result.label_set is not None:
        choice.label_probabilities.extend(
            pb.LabelProbability(label=label, probability=p)
            for label, p in result.label_set.probabilities
        )
        choice.empty_set_probability = result.label_set.empty
    return choice


def _logprobs(tokens: Sequence[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=token.token,
            logprob=token.logprob,
            top_logprobs=[pb.TopLogprob(token=top.token, logprob=top.logprob) for top in token.top],
        )
        for token in tokens
    ]


def _json(text: str, field: str) -> Any:
    """JSON text as a value; NaN and Infinity, which JSON has not, are refused."""

    def refuse(_: str) -> NoReturn:
        raise _not_finite(field)

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"`{field}` is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidRequest(f"`{field}` nests too deeply to be read.") from None


def _struct(struct: Struct, field: str) -> dict[str, Any]:
    try:
        return from_struct(struct)
    except ValueError:  # protobuf's JSON form has no NaN or Infinity either
        raise _not_finite(field) from None


def _not_finite(field: str) -> InvalidRequest:
    return InvalidRequest(f"`{field}` holds a number that is not finite (NaN or Infinity).")


def _request_id() -> str:
    return f"gen-{uuid.uuid4().hex}"
