"""n, logprobs, penalties, logit_bias, prompt lists, token-id prompts, json_object and the
limits of each, through the official OpenAI SDK against the real engine (float32)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from openai import OpenAI, UnprocessableEntityError
from openai.types.chat import ChatCompletionMessageParam
from transformers import AutoTokenizer

from server.grpc_api.gen.hotswap.v1 import inference_pb2 as pb
from server.grpc_api.gen.hotswap.v1 import inference_pb2_grpc
from tests.support.server import RunningServer

pytestmark = pytest.mark.engine

BASE = "SmolLM2-135M-Instruct"
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture(scope="module")
def tokenizer(base_model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(base_model_path))


def test_n_gives_n_choices_with_summed_usage(openai_client: OpenAI) -> None:
    response = openai_client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=8, n=2, seed=3, logprobs=True
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content for c in response.choices)
    tokens = [
        len(c.logprobs.content) for c in response.choices if c.logprobs and c.logprobs.content
    ]
    assert response.usage is not None and response.usage.completion_tokens == sum(tokens)


def test_chat_logprobs_have_openai_shape(openai_client: OpenAI) -> None:
    response = openai_client.chat.completions.create(
        model=BASE, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = response.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert response.usage is not None and len(content) == response.usage.completion_tokens
    # the end-of-sequence token, when generated, is listed too (as vLLM does) but not in the text
    assert "".join(item.token for item in content).startswith(choice.message.content or "")
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.bytes == list(item.token.encode())
        # greedy: the chosen token is the most likely one
        assert item.top_logprobs[0].token == item.token
        assert [t.logprob for t in item.top_logprobs] == sorted(
            (t.logprob for t in item.top_logprobs), reverse=True
        )


def test_chat_logprobs_stream_per_choice(openai_client: OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model=BASE,
        messages=QUESTION,
        max_tokens=5,
        n=2,
        seed=1,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {0: "", 1: ""}
    tokens: dict[int, int] = {0: 0, 1: 0}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                for item in choice.logprobs.content:
                    assert item.logprob <= 0 and len(item.top_logprobs) == 2
                tokens[choice.index] += len(choice.logprobs.content)
    assert all(texts.values())
    assert usage is not None and usage.completion_tokens == tokens[0] + tokens[1]


def test_completion_logprobs_have_openai_shape(openai_client: OpenAI) -> None:
    response = openai_client.completions.create(
        model=BASE, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs or [])
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == 0
    assert "".join(logprobs.tokens).startswith(response.choices[0].text)


def test_logit_bias_bans_and_forces_tokens(openai_client: OpenAI, tokenizer: Any) -> None:
    def first_token(**fields: Any) -> str:
        response = openai_client.chat.completions.create(
            model=BASE, messages=QUESTION, max_tokens=1, temperature=0, logprobs=True, **fields
        )
        assert response.choices[0].logprobs and response.choices[0].logprobs.content
        return response.choices[0].logprobs.content[0].token

    greedy = first_token()
    (greedy_id,) = tokenizer.encode(greedy, add_special_tokens=False)
    assert first_token(logit_bias={str(greedy_id): -100}) != greedy
    (forced_id,) = tokenizer.encode(" banana", add_special_tokens=False)
    assert first_token(logit_bias={str(forced_id): 100}) == " banana"


def test_penalties_change_a_repetitive_answer(openai_client: OpenAI) -> None:
    prompt = "Repeat after me: the the the the the the the the"

    def answer(**fields: Any) -> str:
        response = openai_client.completions.create(
            model=BASE, prompt=prompt, max_tokens=12, temperature=0, **fields
        )
        return response.choices[0].text

    plain = answer()
    assert answer(frequency_penalty=2.0) != plain
    assert answer(presence_penalty=2.0) != plain


def test_prompt_lists_and_token_ids(openai_client: OpenAI, tokenizer: Any) -> None:
    text, other = "The capital of France is", "One, two,"
    ids = tokenizer.encode(text, add_special_tokens=False)
    other_ids = tokenizer.encode(other, add_special_tokens=False)
    by_text = openai_client.completions.create(model=BASE, prompt=text, max_tokens=4, temperature=0)
    by_ids = openai_client.completions.create(model=BASE, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    by_other = openai_client.completions.create(
        model=BASE, prompt=other, max_tokens=4, temperature=0
    )
    many = openai_client.completions.create(
        model=BASE, prompt=[ids, other_ids], max_tokens=4, n=2, seed=5
    )
    # choice i of prompt p is p * n + i
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert all(c.text for c in many.choices)
    assert many.usage is not None and many.usage.prompt_tokens == len(ids) + len(other_ids)
    streamed: dict[int, str] = {}
    usage = None
    for chunk in openai_client.completions.create(
        model=BASE,
        prompt=[text, other],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
    assert streamed == {0: by_text.choices[0].text, 1: by_other.choices[0].text}
    assert usage is not None and usage.prompt_tokens == many.usage.prompt_tokens


@pytest.mark.parametrize("max_tokens", [8, 200])
def test_json_object_answers_one_object_closed_within_max_tokens(
    openai_client: OpenAI, max_tokens: int
) -> None:
    response = openai_client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Describe Paris as JSON with a name and a country."}],
        response_format={"type": "json_object"},
        max_tokens=max_tokens,
        temperature=0,
    )
    choice = response.choices[0]
    assert isinstance(json.loads(choice.message.content or ""), dict), choice
    assert choice.finish_reason == "stop" and response.usage is not None
    assert response.usage.completion_tokens <= max_tokens


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n": 9}, "`n`"),
        ({"n": 2, "temperature": 0}, "`n`"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"49152": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
    ],
)
def test_values_past_the_limits_are_refused_by_name(
    openai_client: OpenAI, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnprocessableEntityError, match=named):
        openai_client.chat.completions.create(
            model=BASE,
            messages=QUESTION,
            max_tokens=2,
            **fields,
        )


def test_completion_prompt_limits_are_refused_by_name(server: RunningServer) -> None:
    for prompt, named in (([7] * 5000, "prompt"), ([[49152]], "prompt"), (["a"] * 17, "prompt")):
        response = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": BASE, "prompt": prompt, "max_tokens": 1},
            timeout=60,
        )
        assert response.status_code in (400, 422) and named in response.text


def test_generate_and_grpc_take_n_and_logprobs(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.url}/v1/generate",
        json={
            "input": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
            "n": 2,
            "temperature": 1.0,
            "seed": 4,
            "logprobs": True,
            "top_logprobs": 1,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["text"] == body["choices"][0]["text"]
    assert all(len(t["top_logprobs"]) == 1 for t in body["logprobs"])
    assert body["usage"]["completion_tokens"] == sum(len(c["logprobs"]) for c in body["choices"])
    request = pb.GenerateRequest(
        text="Say hi.", max_tokens=3, n=2, seed=4, temperature=1.0, logprobs=True, top_logprobs=1
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        reply = stub.Generate(request, timeout=120)
        events = list(stub.GenerateStream(request, timeout=120))
    assert [c.index for c in reply.choices] == [0, 1] and reply.text == reply.choices[0].text
    assert all(len(t.top_logprobs) == 1 and t.logprob <= 0 for t in reply.logprobs)
    deltas = [e for e in events if e.WhichOneof("event") == "delta"]
    assert {e.index for e in deltas} == {0, 1} and all(e.logprobs for e in deltas)
    summary = events[-1].summary
    for choice in summary.choices:
        assert "".join(e.delta for e in deltas if e.index == choice.index) == choice.text
