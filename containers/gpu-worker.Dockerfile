# Celery worker for the `gpu` queue (TensorRT tracks): CUDA runtime + the [gpu] extras.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DJANGO_DEBUG=0 MEDQUANT_VAR_DIR=/srv/var \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/app
COPY pyproject.toml README.md manage.py ./
COPY harness harness
COPY reference_methods reference_methods
COPY leaderboard leaderboard
COPY templates templates
RUN pip install '.[gpu]' && useradd --system --uid 10001 --home /srv medquant \
    && mkdir -p /srv/var && chown -R medquant /srv/var
USER medquant
# one GPU per host: researchers' submissions (gpu) and, beside them, the baselines (gpu-baselines)
CMD ["celery", "-A", "leaderboard", "worker", "-Q", "gpu,gpu-baselines", "--concurrency", "1"]
