"""Token log-probabilities (`server.engine.TokenLogprob`) in OpenAI's two response shapes:
chat's `logprobs.content` (also `/v1/generate`'s) and completions' parallel lists.

The figures are vLLM's raw log-probabilities (its default `logprobs_mode`): the model's own
distribution, before temperature, penalties, `logit_bias` and any schema or tool grammar."""

from __future__ import annotations

from collections.abc import Sequence

from openai.types.chat import ChatCompletionTokenLogprob
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from openai.types.completion_choice import Logprobs

from server.engine import TokenLogprob


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    """Chat's `logprobs.content`: each token with its bytes and its top alternatives."""
    return [
        ChatCompletionTokenLogprob(
            token=token.token,
            bytes=list(token.token.encode()),
            logprob=token.logprob,
            top_logprobs=[
                TopLogprob(token=top.token, bytes=list(top.token.encode()), logprob=top.logprob)
                for top in token.top
            ],
        )
        for token in tokens
    ]


def completion_logprobs(tokens: Sequence[TokenLogprob], text_offset: int = 0) -> Logprobs:
    """Completions' `logprobs`: parallel lists; `text_offset` is where the first token starts
    in the choice's text (a stream's later chunks start after the text already sent)."""
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token.token)
    return Logprobs(
        tokens=[token.token for token in tokens],
        token_logprobs=[token.logprob for token in tokens],
        top_logprobs=[{top.token: top.logprob for top in token.top} for token in tokens],
        text_offset=offsets,
    )
