"""Tool calls on chat completions (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`).

The path of a request with tools:

1. `spec`: the tools and the choice, checked (names, counts, sizes) and turned into a
   `ToolPlan`; its `decoding_schema()` is the JSON Schema a call (or a list of calls) must
   match, served through the same schema admission and validation as `response_format`.
2. `prompt`: the conversation framed for the chat template: the tools through the template's
   own tool support, or hotswap's documented text fallback (docs/openai-compat.md).
3. `runner`: the generation runs (`auto`: a free answer first, a constrained call when it
   opens one) and the validated document parsed into calls with ids.

Nothing is imported here: `server.generation` imports `prompt`, and `runner` imports
`server.generation`.
"""
