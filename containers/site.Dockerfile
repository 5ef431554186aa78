# The leaderboard's web service and CPU workers (one image, two commands; see compose.yaml).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DJANGO_DEBUG=0 DJANGO_STATIC_ROOT=/srv/static \
    MEDQUANT_VAR_DIR=/srv/var OMP_NUM_THREADS=1
WORKDIR /srv/app
COPY pyproject.toml README.md manage.py ./
COPY harness harness
COPY reference_methods reference_methods
COPY leaderboard leaderboard
COPY templates templates
RUN pip install . && useradd --system --uid 10001 --home /srv medquant \
    && mkdir -p /srv/var /srv/static \
    && DJANGO_SECRET_KEY=collectstatic-needs-no-secret python manage.py collectstatic --noinput \
    && chown -R medquant /srv/var
USER medquant
EXPOSE 8000
# threaded workers, stated timeouts, a memory limit per worker (leaderboard/gunicorn_conf.py)
CMD ["gunicorn", "-c", "python:leaderboard.gunicorn_conf", "leaderboard.wsgi"]
