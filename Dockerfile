# syntax=docker/dockerfile:1
# KServe predictor for HuggingFace Transformers.
#
#   docker build -t predictor:cuda .                         # CUDA 12.8 runtime + torch cu128 (default)
#   docker build -t predictor:cpu --build-arg DEVICE=cpu .   # Ubuntu + the CPU wheel of torch
#
# The image holds no model: KServe's storage initializer puts one in /mnt/models
# (a save_pretrained folder with model-config.yaml, or a TorchServe .mar).

# cuda | cpu: picks the base stage below and PyTorch's wheel index.
ARG DEVICE=cuda

# The CUDA runtime of this image matches the CUDA build of torch (TORCH_CUDA=cu128 below);
# change the two together.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS os-cuda
FROM ubuntu:24.04 AS os-cpu

# Python from the distribution, identical in builder and runtime: the venv built below
# is copied across and its interpreter symlinks must resolve in both.
# os-${DEVICE} is one of the two stages above, both with a fixed tag (hadolint and
# checkov do not resolve a variable stage name).
# checkov:skip=CKV_DOCKER_7: os-${DEVICE} names a stage above whose image tag is fixed
# hadolint ignore=DL3006
FROM os-${DEVICE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8
# DL3008: the distribution's python3 of the pinned base image; apt pins would break on its updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM python AS builder
ARG DEVICE
ARG TORCH_VERSION=2.13.0
# The CUDA build of torch; must match the CUDA runtime of os-cuda.
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl
# DL3008: as above, python3-venv must match the base image's python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# torch first, from PyTorch's own index: PyPI's default wheel would be the wrong CUDA build
# (or a CUDA build in the CPU image). pyproject's range (>=2.6,<2.15) accepts it as installed.
RUN case "${DEVICE}" in \
        cuda) flavor="${TORCH_CUDA}" ;; \
        cpu) flavor=cpu ;; \
        *) echo "DEVICE must be cuda or cpu, got '${DEVICE}'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}/${flavor}" "torch==${TORCH_VERSION}"
WORKDIR /src
# README.m[d]: copied when present (pyproject names it as the long description), no error when not.
COPY pyproject.toml README.m[d] ./
COPY predictor ./predictor
# Build the project's wheel, then install it with its dependencies and the backends that
# `handler.backend: auto` chooses from: the CPU image gets ONNX Runtime and OpenVINO; the CUDA
# image gets ONNX Runtime's GPU build (its CPU provider serves when no GPU is visible) and the
# `gpu` extra (accelerate, for handler.model_parallel). Sizes are in the README's backend section.
# DL3013: the wheel is the one built here; pyproject.toml pins its dependencies' ranges.
# hadolint ignore=DL3013
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && wheel="$(ls /wheels/predictor-*.whl)" \
    && if [ "${DEVICE}" = cuda ]; then extras=gpu,onnx-gpu; else extras=onnx,openvino; fi \
    && pip install --no-cache-dir "${wheel}[${extras}]" \
    && python -c "import torch, onnxruntime, predictor; print(torch.__version__, onnxruntime.__version__)"

FROM python AS runtime
ARG DEVICE
# Fixed, non-root, above the range of host and distribution users (ubuntu images own 1000).
ARG UID=10001
LABEL org.opencontainers.image.title="predictor" \
      org.opencontainers.image.description="KServe predictor for HuggingFace Transformers (${DEVICE})" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid "${UID}" predictor \
    && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin predictor \
    && mkdir -p /mnt/models \
    && chmod 0755 /mnt/models
COPY --from=builder /opt/venv /opt/venv
# Everything the server writes goes under /tmp (an emptyDir in Kubernetes: the root
# filesystem is read-only); the hub is never contacted at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    PREDICTOR_CACHE_DIR=/tmp/predictor
WORKDIR /tmp
USER ${UID}:${UID}
# 8080: HTTP (KServe v1/v2, TorchServe routes, /metrics); 8081: gRPC v2; 7070: TorchServe gRPC;
# 8082: TorchServe management API (read side) and /metrics.
EXPOSE 8080 8081 7070 8082
# Docker only; Kubernetes uses the probes of the ServingRuntime.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
ENTRYPOINT ["python", "-m", "predictor"]
CMD ["--model_dir=/mnt/models", "--http_port=8080", "--grpc_port=8081"]
