"""Leaderboard settings: embedded defaults (SQLite, local files) unless the environment says."""

import os
import warnings
from pathlib import Path

from leaderboard.config import (
    database_from_url,
    embedded_secret_key,
    secret_key,
    visibility_timeout_s,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("MEDQUANT_VAR_DIR", BASE_DIR / "var"))

# DEBUG only when asked for (it shows settings and tracebacks to visitors). The secret key: the
# environment's; a production start (DATABASE_URL set) without one, or with the built-in
# development key, refuses to run; the embedded stack keeps a random one in VAR_DIR.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
SECRET_KEY = secret_key(
    os.environ.get("DJANGO_SECRET_KEY"),
    debug=DEBUG,
    production=bool(os.environ.get("DATABASE_URL")),
    embedded=lambda: embedded_secret_key(VAR_DIR / "secret_key"),
)
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs page's JavaScript, served locally (no CDN)
    "leaderboard.accounts",
    "leaderboard.tracks",
    "leaderboard.submissions",
    "leaderboard.api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # before the CSRF check and the views read the request (it needs the user)
    "leaderboard.middleware.RequestLimitsMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "leaderboard.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "leaderboard.wsgi.application"

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL"), VAR_DIR / "db.sqlite3")}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Files: local folders by default; S3-compatible storage when MEDQUANT_S3_BUCKET is set.
STATIC_URL = "static/"
# `collectstatic` (run by `make run` and the containers) writes each file with its gzip and
# Brotli forms beside it (CompressedStaticFilesStorage), which WhiteNoise serves to browsers that
# accept them; before it has run, the apps' files are served as they are (finders).
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or VAR_DIR / "static")
WHITENOISE_USE_FINDERS = not STATIC_ROOT.is_dir()
# ... and WhiteNoise's warning that STATIC_ROOT does not exist yet says nothing new then
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)
MEDIA_ROOT = VAR_DIR / "media"
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if os.environ.get("MEDQUANT_S3_BUCKET"):
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["MEDQUANT_S3_BUCKET"],
            "endpoint_url": os.environ.get("MEDQUANT_S3_ENDPOINT_URL"),
            "default_acl": "private",
            "querystring_auth": True,
        },
    }
# Uploads larger than this go to a temporary file instead of memory; the artifact limit is below.
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024 * 1024
MEDQUANT_MAX_ARTIFACT_BYTES = int(os.environ.get("MEDQUANT_MAX_ARTIFACT_MB", "512")) * 1024 * 1024
# Where workers unpack artifacts for evaluation. A container worker that drives the host's Docker
# engine bind-mounts /input from here, so there it must be the same path on the host and inside the
# worker (see containers/compose.yaml).
MEDQUANT_WORK_DIR = Path(os.environ.get("MEDQUANT_WORK_DIR", VAR_DIR / "work"))
# The FP32 reference runs the harness computes once per track and every worker reads
# (``harness.track.run_cache``): on the storage the workers share (``var`` in compose).
MEDQUANT_CACHE_DIR = Path(os.environ.setdefault("MEDQUANT_CACHE_DIR", str(VAR_DIR / "cache")))

# Address space of one evaluation (RLIMIT_AS in each Celery pool child; 0: none): whatever
# escapes verification and allocates beyond it ends `rejected: exceeds the memory limit` instead
# of taking the worker host down. The default leaves room for the FP32 reference, the entry and
# the real-backend runtimes (a worker child with torch and ONNX Runtime loaded maps ~1 GB).
MEDQUANT_EVALUATION_MEMORY_BYTES = (
    int(os.environ.get("MEDQUANT_EVALUATION_MEMORY_MB", "16384")) * 1024 * 1024
)

# Quantizer containers (the `containers` queue). Tracks accept them only when container workers
# run (MEDQUANT_CONTAINERS=1); an uploaded `docker save` tarball has its own size limit. A
# registry reference (name:tag or name@sha256:…) is accepted only from the configured registry
# host and is pulled and pinned by digest. The helper image holds a run's /output volume: any
# trusted image with `python` (the worker's own). The work folder must be a path the Docker
# engine sees under the same name (it is bind-mounted as the quantizer's /input).
MEDQUANT_CONTAINERS = os.environ.get("MEDQUANT_CONTAINERS", "0") == "1"
MEDQUANT_MAX_IMAGE_BYTES = int(os.environ.get("MEDQUANT_MAX_IMAGE_MB", "4096")) * 1024 * 1024
# Largest request body read at all (its declared Content-Length; more is refused unread, 413):
# the largest upload this site takes plus the form's other fields.
MEDQUANT_MAX_REQUEST_BYTES = (
    max(MEDQUANT_MAX_ARTIFACT_BYTES, MEDQUANT_MAX_IMAGE_BYTES if MEDQUANT_CONTAINERS else 0)
    + DATA_UPLOAD_MAX_MEMORY_SIZE
)
MEDQUANT_CONTAINER_REGISTRY = os.environ.get("MEDQUANT_CONTAINER_REGISTRY", "")
MEDQUANT_CONTAINER_HELPER_IMAGE = os.environ.get(
    "MEDQUANT_CONTAINER_HELPER_IMAGE", "python:3.11-slim"
)
MEDQUANT_CONTAINER_GPU = os.environ.get("MEDQUANT_CONTAINER_GPU", "0") == "1"
# Resources of one quantizer run (harness.containers.sandbox.ContainerLimits fields; the wall-clock
# limit comes from the track, the output limit is the upload limit).
MEDQUANT_CONTAINER_LIMITS = {
    "cpus": float(os.environ.get("MEDQUANT_CONTAINER_CPUS", min(4, os.cpu_count() or 1))),
    "memory_bytes": int(os.environ.get("MEDQUANT_CONTAINER_MEMORY_MB", "8192")) * 1024 * 1024,
}

# Rendered leaderboards are cached per ranking version; Redis when MEDQUANT_CACHE_URL is set.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["MEDQUANT_CACHE_URL"],
        }  # fmt: skip
        if os.environ.get("MEDQUANT_CACHE_URL")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
BOARD_CACHE_SECONDS = 600

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# Celery: the embedded default is a broker that needs no server (SQLAlchemy transport on SQLite).
CELERY_BROKER_URL = os.environ.get(
    "CELERY_BROKER_URL", f"sqla+sqlite:///{VAR_DIR / 'broker.sqlite3'}"
)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
# The longest evaluation any track may set (Track.time_limit_s + quantizer_timeout_s are capped
# by it); Redis redelivers an unacknowledged task after the visibility timeout, derived from it
# (plus the hard-limit margin and slack), so a running task is never delivered twice. The
# SQLAlchemy transport takes engine options here, so it gets none.
MEDQUANT_LONGEST_TIME_LIMIT_S = int(os.environ.get("MEDQUANT_LONGEST_TIME_LIMIT_S", "7200"))
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"visibility_timeout": visibility_timeout_s(MEDQUANT_LONGEST_TIME_LIMIT_S)}
    if CELERY_BROKER_URL.startswith("redis")
    else {}
)
# A broker or database outage: the client retries connecting instead of giving up.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None

# Every 500 and every internal failure is logged with its traceback, DEBUG or not (Django's
# default sends request errors only to mail_admins when DEBUG is off).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "leaderboard": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "harness": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "leaderboard.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "leaderboard.api.errors.error_body_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("MEDQUANT_RATE_ANON", "120/min"),
        "user": os.environ.get("MEDQUANT_RATE_USER", "600/min"),
        "submit": os.environ.get("MEDQUANT_RATE_SUBMIT", "30/hour"),  # API and web form
        "signup": os.environ.get("MEDQUANT_RATE_SIGNUP", "10/hour"),  # per client address
    },
    # The client address the throttles count by: the connection's, unless this many reverse
    # proxies of ours stand in front (then the X-Forwarded-For entry the nearest one appended);
    # with 0 (the default) X-Forwarded-For is ignored, so a client cannot pick its address.
    "NUM_PROXIES": int(os.environ.get("MEDQUANT_TRUSTED_PROXIES", "0")),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MedQuant Leaderboard API",
    "DESCRIPTION": "Tracks, leaderboards and one-call submissions of quantized 3D segmentation "
    "models. Authenticate with `Authorization: Token <your token>`.",
    "VERSION": "v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "REDOC_DIST": "SIDECAR",
}
