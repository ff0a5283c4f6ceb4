"""The README's examples print what a new user sees: each runs against a server with the
default settings (no `--dtype`: the CPU's default, `adapters.cpu_dtype`) and must give the
output the README shows."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.cpu_dtype import default_cpu_dtype
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.engine

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
README_URL = "http://127.0.0.1:8000"


def _block(opening: str) -> str:
    """The fenced code block of the README that contains `opening`."""
    for block in re.findall(r"```(?:sh|python)\n(.*?)```", README, flags=re.DOTALL):
        if opening in block:
            return str(block)
    raise AssertionError(f"the README has no code block with {opening!r}")


@pytest.fixture(scope="module")
def default_server(
    base_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("readme")
    running = start_server(home / "server.log", home=home, base_model=base_model_path, args=[])
    try:
        yield running
    finally:
        running.stop()


def test_the_curl_task_call_answers_what_the_readme_shows(default_server: RunningServer) -> None:
    block = _block("curl -s localhost:8000/v1/generate")
    body = json.loads(block.split("-d '", 1)[1].split("'", 1)[0])
    shown = json.loads("".join(line[2:] for line in block.splitlines() if line.startswith("# ")))
    response = httpx.post(f"{default_server.url}/v1/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert response.json() == shown


def test_the_python_example_prints_what_the_readme_shows(default_server: RunningServer) -> None:
    block = _block("from openai import OpenAI")
    code = block.replace(f"{README_URL}/v1", f"{default_server.url}/v1")
    shown = block.split("print(", 1)[1].split("# ", 1)[1].splitlines()[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    assert printed.getvalue().strip() == shown


@pytest.mark.cpu_only
def test_the_default_server_runs_the_dtype_this_cpu_multiplies_fast(
    default_server: RunningServer,
) -> None:
    """`auto` on CPU: bfloat16 only where the CPU has bfloat16 instructions, else float32
    (`adapters.cpu_dtype`); vLLM logs the dtype its engine was built with."""
    built = set(
        re.findall(r"[ ,(]dtype=torch\.(\w+)", default_server.log.read_text(errors="replace"))
    )
    assert built == {default_cpu_dtype()}, default_server.log_tail()
