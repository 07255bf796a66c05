# syntax=docker/dockerfile:1
#
# BGE-M3 embedding server: gunicorn + Falcon web workers, one torch engine per device.
#
#   docker build -t embsvc:cuda .                                   # CUDA build of torch (default)
#   docker build -t embsvc:cpu --build-arg TORCH_INDEX_URL=<CPU wheel index> \
#       --build-arg REQUIREMENTS_LOCK=requirements-cpu.lock .       # after make lock-cpu
#
# The CUDA image needs only the NVIDIA driver on the host (the torch wheel
# brings its own CUDA libraries) and a GPU given to the container
# (--gpus / compose device reservation / nvidia.com/gpu in Kubernetes).
# See the README (Deployment).

# The base image by digest, so that a rebuild gets the same bytes: python:3.11-slim-bookworm as
# it was published for 3.11.15. Move it on with the tag's new digest (docker buildx imagetools
# inspect python:3.11-slim-bookworm) and rebuild; docs/operators.md, Supply chain.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

# Empty: torch from the default index (on Linux x86_64 that is the CUDA build).
# A CPU image passes the index of the CPU wheels here, and the lock made for it.
ARG TORCH_INDEX_URL=""
# Every package and every file's sha256, written by make lock from requirements.txt.
ARG REQUIREMENTS_LOCK=requirements.lock

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements.txt requirements*.lock deploy/docker/check_lock.py /tmp/

# Only what the lock names, each file checked against its hash (pip refuses a
# package without one, transitive ones included); a lock that lacks a pin of
# requirements.txt stops the build. torch first, on its own, so that the index
# choice applies to torch alone; then the rest, which finds torch in place.
# The CPU wheel index needs its own lock (its torch files differ); pip takes
# from either index only the files whose hashes the lock holds.
RUN if [ -n "$TORCH_INDEX_URL" ] && [ "$REQUIREMENTS_LOCK" = "requirements.lock" ]; then \
        echo "TORCH_INDEX_URL needs --build-arg REQUIREMENTS_LOCK=requirements-cpu.lock (make lock-cpu)" >&2; \
        exit 1; \
    fi \
    && python /tmp/check_lock.py /tmp/requirements.txt "/tmp/${REQUIREMENTS_LOCK}" \
    && awk '/^torch==/ {keep = 1; print; next} keep && /^[[:space:]]/ {print; next} {keep = 0}' \
        "/tmp/${REQUIREMENTS_LOCK}" > /tmp/torch.lock \
    && pip install --no-cache-dir --require-hashes --no-deps --only-binary :all: \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} -r /tmp/torch.lock \
    && pip install --no-cache-dir --require-hashes --only-binary :all: \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r "/tmp/${REQUIREMENTS_LOCK}" \
    && pip check \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The engine's compiled attention and products for x86-64 CPUs with AVX-512 BF16 and VNNI
# (gpu_pool/model/native): built here, so that the final stage gets the library and no compiler
# (elsewhere the engine runs torch's attention and oneDNN's products). Debian's gcc and libc headers
# of the base image's release, unpinned: a pinned libc6-dev leaves the mirror at the next point release.
COPY gpu_pool/model/native/*.c gpu_pool/model/native/*.h gpu_pool/model/native/compiler.py /opt/native/
# hadolint ignore=DL3008
RUN if [ "$(uname -m)" = x86_64 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/* \
        && python /opt/native/compiler.py; \
    fi

# ---------------------------------------------------------------- final stage
# No compiler, no pip cache, no build files: the venv and the application only.
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="embsvc" \
      org.opencontainers.image.description="HTTP embedding server for BAAI/bge-m3 (dense, sparse, ColBERT)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0:8000 \
    MODEL_PATH=/app/BGE-M3 \
    RERANKER_PATH=/app/bge-reranker-v2-m3 \
    HF_HOME=/app/.cache/huggingface

RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/BGE-M3 /app/bge-reranker-v2-m3 /app/.cache/huggingface \
    && chown -R app:app /app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
COPY --chown=app:app gunicorn.conf.py ./
COPY --chown=app:app embsvc/ ./embsvc/
COPY --chown=app:app gpu_pool/ ./gpu_pool/
# The folder, not a glob: on another machine it holds no library, and the copy must not fail.
COPY --from=build --chown=app:app /opt/native/ ./gpu_pool/model/native/
COPY --chown=app:app runtime/ ./runtime/
COPY --chown=app:app deploy/docker/healthcheck.py ./deploy/docker/healthcheck.py

USER ${APP_UID}:${APP_GID}

# The weights of bge-m3 and of the cross-encoder: mount a volume on each (downloaded
# from the Hub on first start when empty), or point MODEL_PATH and RERANKER_PATH at
# snapshots inside a mounted Hugging Face cache; RERANKER_PATH=none serves bge-m3 alone.
VOLUME ["/app/BGE-M3", "/app/bge-reranker-v2-m3"]

EXPOSE 8000

# Loading (and a first download) takes minutes: failures in the start period do not count.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py"]

ENTRYPOINT ["gunicorn", "-c", "/app/gunicorn.conf.py"]
CMD ["embsvc.wsgi:app"]
