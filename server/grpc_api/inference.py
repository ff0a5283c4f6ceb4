"""`hotswap.v1.Inference`: the task call, unary and streamed, on the same domain calls as
`POST /v1/generate` (`server/generation.py`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import aclosing
from typing import Any, NoReturn

from google.protobuf.struct_pb2 import Struct

from server.auth import Role
from server.errors import InvalidRequest
from server.generation import GenerationRequest, GenerationResult
from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import inference_pb2_grpc
from server.grpc_api.guard import GuardedServicer, guarded
from server.grpc_api.structs import from_struct, to_struct
from server.requests import generation_request, parse_generate

_KNOBS = ("max_tokens", "temperature", "top_p", "seed")


class InferenceServicer(inference_pb2_grpc.InferenceServicer, GuardedServicer):
    @guarded(Role.INFER)
    async def Generate(  # noqa: N802 (gRPC method name)
        self, request: pb.GenerateRequest, context: Any
    ) -> pb.GenerateResponse:
        generation = self.ready().generation
        prepared = await generation.prepare(await _domain_request(request))
        return response(await generation.complete(prepared, _request_id()))

    @guarded(Role.INFER)
    async def GenerateStream(  # noqa: N802 (gRPC method name)
        self, request: pb.GenerateRequest, context: Any
    ) -> None:
        generation = self.ready().generation
        prepared = await generation.prepare(await _domain_request(request))
        result = GenerationResult(model=prepared.model)
        stream = generation.stream(prepared, _request_id(), result)
        # Closed at once when the call is cancelled, which aborts the request in the engine.
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    await context.write(pb.GenerateStreamResponse(delta=chunk.text))
        await context.write(pb.GenerateStreamResponse(summary=response(result)))


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
    return generation_request(parse_generate(fields), protocol="grpc")


def response(result: GenerationResult) -> pb.GenerateResponse:
    message = pb.GenerateResponse(
        text=result.text,
        usage=pb.Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        ),
        adapter=pb.AdapterRef(name=result.model.name),
    )
    if result.model.version is not None:
        message.adapter.version = result.model.version
    if result.finish_reason is not None:
        message.finish_reason = result.finish_reason
    if result.valid is not None:
        message.valid = result.valid
    if isinstance(result.output, dict):
        message.output_struct.CopyFrom(to_struct(result.output))
    elif result.output is not None:
        message.output_json = json.dumps(result.output)
    return message


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
