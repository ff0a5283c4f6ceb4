"""The real engine with the fast CPU LoRA ops against PEFT on the transformers model (float32).

One vLLM engine for the module (LoRA on, `max_loras=4`, the fast ops on), serving one mixed
batch: base requests and six adapters (more adapters than slots, so slots are reloaded while
the batch runs), ranks 8 and 16, q,v only and all linear layers, prompts of varied lengths.
Every prompt log-prob (prefill) and every sampled-token log-prob (decode) must match PEFT's
log-softmax to 1e-4 relative, and every greedy token must be PEFT's argmax.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.engine, pytest.mark.cpu_only, pytest.mark.cxx]

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "qv8": (8, ("q_proj", "v_proj")),
    "all16a": (16, ALL_LINEAR),
    "all16b": (16, ALL_LINEAR),
    "all8": (8, ALL_LINEAR),
    "mlp16": (16, ("gate_proj", "up_proj", "down_proj")),
    "qkvo16": (16, ("q_proj", "k_proj", "v_proj", "o_proj")),
}
MAX_TOKENS = 12
TOP = 5
RELATIVE_TOLERANCE = 1e-4

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea and the wind and the long grey evening over the harbour:",
    "1, 2, 3, 4,",
    "Explain in one sentence why the sky is blue.",
    "Once upon a time, in a small village at the edge of a dark forest, there lived an old"
    " clockmaker who",
    "Q: What is 12 times 12?\nA:",
    "Translate to French: good morning",
    "List three colours:",
]
# which adapter each prompt uses (None: the base model); base rows in the middle of the batch
REQUEST_ADAPTERS = [None, "qv8", "all16a", None, "all16b", "all8", "mlp16", "qkvo16"]


@dataclass(frozen=True)
class Served:
    """What vLLM returned for one request."""

    prompt_ids: list[int]
    adapter: str | None
    prompt_logprobs: list[dict[int, float] | None]
    output_ids: list[int]
    output_logprobs: list[dict[int, float]]


@pytest.fixture(scope="module")
def adapter_paths(
    base_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Random PEFT LoRAs (A and B nonzero) saved to folders, as a trainer would leave them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora-cpu-adapters")
    paths = {}
    for seed, (name, (rank, targets)) in enumerate(ADAPTERS.items()):
        model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        g = torch.Generator().manual_seed(seed)
        for param_name, param in peft_model.named_parameters():
            if "lora_A" in param_name:
                param.data = torch.randn(param.shape, generator=g) / param.shape[1] ** 0.5
            elif "lora_B" in param_name:
                param.data = torch.randn(param.shape, generator=g) * 0.02
        paths[name] = root / name
        peft_model.save_pretrained(paths[name])
    return paths


def _punica_wrapper_name(worker: Any) -> str:
    for module in worker.model_runner.model.modules():
        wrapper = getattr(module, "punica_wrapper", None)
        if wrapper is not None:
            return type(wrapper).__name__
    return "none"


@pytest.fixture(scope="module")
def llm(base_model_path: Path) -> Iterator[Any]:
    saved = {k: os.environ.get(k) for k in ("HOTSWAP_FAST_CPU_LORA", "VLLM_CPU_KVCACHE_SPACE")}
    saved["VLLM_ALLOW_INSECURE_SERIALIZATION"] = os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION")
    os.environ["HOTSWAP_FAST_CPU_LORA"] = "1"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # to ask the worker which wrapper runs
    from vllm import LLM

    engine = LLM(
        model=str(base_model_path),
        dtype="float32",
        enable_lora=True,
        max_lora_rank=16,
        max_loras=4,
        max_model_len=512,
        max_num_seqs=16,
        seed=0,
    )
    try:
        yield engine
    finally:
        del engine
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def served(llm: Any, adapter_paths: dict[str, Path], base_model_path: Path) -> list[Served]:
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    lora_ids = {name: i + 1 for i, name in enumerate(ADAPTERS)}
    requests = [
        None if name is None else LoRARequest(name, lora_ids[name], str(adapter_paths[name]))
        for name in REQUEST_ADAPTERS
    ]
    params = SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=TOP, prompt_logprobs=TOP
    )
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=i) for i in ids], params, lora_request=requests
    )
    result = []
    for prompt_ids, name, out in zip(ids, REQUEST_ADAPTERS, outputs, strict=True):
        completion = out.outputs[0]
        result.append(
            Served(
                prompt_ids=prompt_ids,
                adapter=name,
                prompt_logprobs=[
                    None if d is None else {t: lp.logprob for t, lp in d.items()}
                    for d in out.prompt_logprobs
                ],
                output_ids=list(completion.token_ids),
                output_logprobs=[
                    {t: lp.logprob for t, lp in d.items()} for d in completion.logprobs
                ],
            )
        )
    return result


@pytest.fixture(scope="module")
def reference(
    served: list[Served], adapter_paths: dict[str, Path], base_model_path: Path
) -> list[torch.Tensor]:
    """PEFT's log-softmax over prompt + vLLM's output tokens, one forward pass per request."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    names = list(ADAPTERS)
    peft_model = PeftModel.from_pretrained(model, adapter_paths[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(adapter_paths[name], adapter_name=name)
    peft_model.eval()
    logprobs = []
    with torch.no_grad():
        for request in served:
            tokens = torch.tensor([request.prompt_ids + request.output_ids])
            if request.adapter is None:
                with peft_model.disable_adapter():
                    logits = peft_model(input_ids=tokens).logits[0]
            else:
                peft_model.set_adapter(request.adapter)
                logits = peft_model(input_ids=tokens).logits[0]
            logprobs.append(torch.log_softmax(logits.double(), dim=-1))
    return logprobs


def _assert_close(served_lp: float, ref_lp: float, where: str) -> None:
    error = abs(served_lp - ref_lp)
    assert error <= RELATIVE_TOLERANCE * max(1.0, abs(ref_lp)), (
        f"{where}: vLLM {served_lp:.7f} vs PEFT {ref_lp:.7f} (|Δ| {error:.2e})"
    )


def test_engine_runs_the_fast_wrapper(llm: Any) -> None:
    assert llm.collective_rpc(_punica_wrapper_name) == ["SegmentedPunicaWrapperCPU"]


def test_engine_keeps_torch_compile_with_lora(llm: Any) -> None:
    """The plugin keeps the CPU platform's compilation on: these outputs come from the graph."""
    from vllm.config import CompilationMode

    mode = llm.llm_engine.vllm_config.compilation_config.mode
    assert mode == CompilationMode.DYNAMO_TRACE_ONCE


def test_adapters_change_the_outputs(served: list[Served]) -> None:
    """The comparison is meaningful: the adapters visibly move the model away from the base."""
    assert len({tuple(r.output_ids) for r in served}) == len(served)


def test_prefill_logprobs_match_peft(served: list[Served], reference: list[torch.Tensor]) -> None:
    compared = 0
    for r, ref in zip(served, reference, strict=True):
        for position, top in enumerate(r.prompt_logprobs):
            if top is None:
                continue
            for token, lp in top.items():
                where = f"{r.adapter or 'base'} prompt position {position} token {token}"
                _assert_close(lp, float(ref[position - 1, token]), where)
                compared += 1
    assert compared > 200


def test_decode_logprobs_and_greedy_tokens_match_peft(
    served: list[Served], reference: list[torch.Tensor]
) -> None:
    for r, ref in zip(served, reference, strict=True):
        assert len(r.output_ids) == MAX_TOKENS
        for step, (token, top) in enumerate(zip(r.output_ids, r.output_logprobs, strict=True)):
            row = ref[len(r.prompt_ids) + step - 1]
            name = r.adapter or "base"
            assert token == int(row.argmax()), f"{name}: greedy token {step} differs from PEFT"
            for candidate, lp in top.items():
                _assert_close(lp, float(row[candidate]), f"{name} decode step {step} {candidate}")
