"""Settings of the E-Card platform, read from the environment.

Three modes, chosen by ``DEBUG``:

* unset — the embedded default (``make demo``, ``make test`` from a fresh clone): SQLite in
  ``var/``, Celery tasks in-process, **no debug pages**, development-friendly defaults (loopback
  host names, plain-HTTP cookies, CSP report-only); ``SECRET_KEY`` and ``ECARD_MASTER_KEY``, when
  not in the environment, are generated once into ``var/secrets.json`` (mode 0600,
  :mod:`ecard.local_secrets`).
* ``DEBUG=1`` — development (``scripts/demo.sh``): the same, plus Django's debug pages, whose
  secrets are masked (:mod:`ecard.debug`).
* ``DEBUG=0`` — production: secure defaults, no generated or default secret (refuses to start
  without ``SECRET_KEY``, and ``ECARD_MASTER_KEY`` with the software key backend), JSON logs.
  Production and CI also set ``DATABASE_URL`` (PostgreSQL), ``CELERY_BROKER_URL`` (Redis),
  ``ALLOWED_HOSTS``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

# Lets generic Django classes be subscripted at run time (ModelChoiceField[Release]), as mypy sees them.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR: Path = Path(os.environ.get("ECARD_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    """A boolean environment variable: 1/true/yes/on are true, 0/false/no/off false."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {raw!r}")


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated environment variable."""
    raw = os.environ.get(name)
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Debug pages only when asked for (DEBUG=1): a 500 under the default settings is a plain error page.
DEBUG = env_bool("DEBUG", default=False)
# DEBUG=0, set explicitly, declares a production deployment: secure defaults and no secret that
# is not in the environment. Unset is the embedded default (module docstring).
PRODUCTION: bool = os.environ.get("DEBUG", "").strip() != "" and not DEBUG
# Django's error reports mask secrets by name, URL passwords by value, and bytes locals.
DEFAULT_EXCEPTION_REPORTER_FILTER = "ecard.debug.SecretMaskingExceptionReporterFilter"

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # Embedded default and development: random, generated once per installation into var/ (0600).
    from ecard import local_secrets

    SECRET_KEY = local_secrets.load(VAR_DIR)["SECRET_KEY"]

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "ecard.apps.EcardAdminConfig",  # django.contrib.admin with the platform's site (portal/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "issuers",
    "cards",
    "updates",
    "audit",
    "portal",
    "demo",  # seed_demo, seed_load: the top layer, nothing imports it
]

MIDDLEWARE = [
    "ecard.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "ecard.limits.RequestBoundsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Refusals (403, object-route 404) into the security event log (audit/security.py).
    "audit.middleware.SecurityEventMiddleware",
]

ROOT_URLCONF = "ecard.urls"

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

WSGI_APPLICATION = "ecard.wsgi.application"

# --- database -------------------------------------------------------------
# DATABASE_URL=postgres://user@host:5432/name selects PostgreSQL; without it,
# SQLite in var/ (the embedded default).
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'ecard.sqlite3'}"),
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
# Optional read replica for portal pages (ecard/dbrouting.py); unset: one database, no router.
ECARD_DB_REPLICA_URL = os.environ.get("ECARD_DB_REPLICA_URL", "")
ECARD_DB_REPLICA_PIN_SECONDS = int(os.environ.get("ECARD_DB_REPLICA_PIN_SECONDS", "5"))
if ECARD_DB_REPLICA_URL:
    DATABASES["replica"] = dj_database_url.parse(
        ECARD_DB_REPLICA_URL, conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")), conn_health_checks=True
    )
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
    DATABASE_ROUTERS = ["ecard.dbrouting.ReplicaRouter"]
    MIDDLEWARE.append("ecard.dbrouting.ReplicaReadsMiddleware")  # portal page reads go to the replica
# PostgreSQL: parameters bound by the server, and a statement run twice on a connection prepared
# there (psycopg's prepare_threshold): the relay repeats the same few statements, and PostgreSQL
# then skips parsing and planning them (about a third of its CPU per card session,
# docs/benchmarks.md). ECARD_DB_PREPARED=0 turns it off, e.g. behind PgBouncer in transaction
# mode before 1.21, which cannot keep prepared statements.
if (
    DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    and os.environ.get("ECARD_DB_PREPARED", "1") == "1"
):
    DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=2)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the agent's HTTP requests and in-process tasks read while one writes.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# --- security (defaults effective in production, DEBUG=0) --------------------------------
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000" if PRODUCTION else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)
if env_bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# How many proxies in front append to X-Forwarded-For (ecard/client.py); 0 = trust none of it.
ECARD_TRUSTED_PROXIES = int(os.environ.get("ECARD_TRUSTED_PROXIES", "0"))
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", str(5 * 1024 * 1024)))
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
# API input bounds (ecard/limits.py, parsers.py, pagination.py): a JSON or form body is at most
# ECARD_MAX_JSON_BYTES (2 MiB; 413 beyond), any request body at most ECARD_MAX_UPLOAD_BYTES,
# JSON at most ECARD_JSON_MAX_DEPTH levels deep (400 beyond), a page at most ECARD_API_MAX_LIMIT items.
ECARD_MAX_UPLOAD_BYTES = int(os.environ.get("ECARD_MAX_UPLOAD_BYTES", str(DATA_UPLOAD_MAX_MEMORY_SIZE)))
ECARD_MAX_JSON_BYTES = int(os.environ.get("ECARD_MAX_JSON_BYTES", str(2 * 1024 * 1024)))
ECARD_JSON_MAX_DEPTH = int(os.environ.get("ECARD_JSON_MAX_DEPTH", "32"))
ECARD_API_MAX_LIMIT = int(os.environ.get("ECARD_API_MAX_LIMIT", "500"))

# --- REST API ----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "ecard.parsers.JSONParser",
        "ecard.parsers.FormParser",
        "ecard.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "ecard.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "audit.api_errors.exception_handler",  # problem documents; refusals recorded
    # Throttles identify clients by REMOTE_ADDR, or through the trusted proxies only: left unset,
    # DRF would take a client-written X-Forwarded-For as the client's identity.
    "NUM_PROXIES": ECARD_TRUSTED_PROXIES,
    # Rate limits (HTTP 429 problem documents); per agent credential and per client address on
    # the relay, per user elsewhere. Counters live in the cache (Redis in production).
    "DEFAULT_THROTTLE_RATES": {
        "relay_credential": os.environ.get("ECARD_RELAY_RATE", "600/min"),
        "relay_ip": os.environ.get("ECARD_RELAY_IP_RATE", "6000/min"),
        "user": os.environ.get("ECARD_API_USER_RATE", "1200/min"),
        "anon": os.environ.get("ECARD_API_ANON_RATE", "120/min"),
    },
    "DEFAULT_THROTTLE_CLASSES": [
        "ecard.throttling.FailOpenUserRateThrottle",
        "ecard.throttling.FailOpenAnonRateThrottle",
    ],
}

# --- cache (rate-limit counters, login throttling) --------------------------------------------
# CACHE_URL=redis://host:6379/1 shares counters between processes; the default is per process.
CACHE_URL = os.environ.get("CACHE_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "ecard.cache.ReusedClientRedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "ecard"}
    )
}

# --- Content Security Policy (django-csp) ----------------------------------------------------
# Enforced when ECARD_CSP_ENFORCE=1 (production), report-only otherwise.
_CSP = {
    "EXCLUDE_URL_PREFIXES": ["/admin/"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
if env_bool("ECARD_CSP_ENFORCE", default=PRODUCTION):
    CONTENT_SECURITY_POLICY = _CSP
else:
    CONTENT_SECURITY_POLICY_REPORT_ONLY = _CSP

SPECTACULAR_SETTINGS = {
    "TITLE": "E-Card platform API",
    "DESCRIPTION": "Cards, security domains, enrollments, releases, rollouts and the audit log "
    "of the universal E-Card platform. Errors are RFC 7807 problem documents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery ----------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
# Embedded default: no broker configured -> tasks run in-process, at call time.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
if not CELERY_BROKER_URL:
    CELERY_BROKER_URL = "memory://"
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Workers keep the LOGGING configuration below (JSON lines with request ids in production).
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Redis: an unacknowledged message (its worker died mid-task) is delivered again after this many seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600")),
    # How many restore checks (one every 10 s) to skip between scans for such messages.
    "unacked_restore_throttle": int(os.environ.get("CELERY_UNACKED_RESTORE_THROTTLE", "10")),
}

# --- logging ---------------------------------------------------------------
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json" if PRODUCTION else "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "ecard.observability.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "ecard.observability.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per request with its id and duration (runserver prints its own when DEBUG).
        "ecard.access": {"level": "INFO" if PRODUCTION else "WARNING"},
    },
}

# --- platform ----------------------------------------------------------------
# Where emulated cards keep their state files (cardsim).
ECARD_CARDS_DIR = Path(os.environ.get("ECARD_CARDS_DIR", VAR_DIR / "cards"))
# The demo banks' key services' directories (demo and prod-local only: real banks run theirs on
# their own premises; docs/keyservice.md).
ECARD_KEYSERVICE_DIR = Path(os.environ.get("ECARD_KEYSERVICE_DIR", VAR_DIR / "keyservice"))

from ecard.settings_audit import *  # noqa: F403,E402
from ecard.settings_custody import *  # noqa: F403,E402
from ecard.settings_rollouts import *  # noqa: F403,E402

# --- relay sessions -------------------------------------------------------------------------
# A card session idle this long is closed; its jobs resume at the card's next presentation.
ECARD_SESSION_IDLE_SECONDS = int(os.environ.get("ECARD_SESSION_IDLE_SECONDS", "120"))
# Agent and terminal credentials are trusted from the cache this long (revocation drops them at once).
ECARD_CREDENTIAL_CACHE_SECONDS = int(os.environ.get("ECARD_CREDENTIAL_CACHE_SECONDS", "5"))
CELERY_BEAT_SCHEDULE["expire-idle-relay-sessions"] = {  # noqa: F405 - defined in settings_audit
    "task": "updates.expire_idle_sessions",
    "schedule": 60.0,
    "options": {"expires": 60.0},
}

# --- bank key services (docs/keyservice.md) ------------------------------------------------------
# The platform's TLS client identity (key and self-signed certificate) that each bank's key service
# pins; created on first use.
ECARD_KEYSERVICE_CLIENT_DIR = Path(os.environ.get("ECARD_KEYSERVICE_CLIENT_DIR", VAR_DIR / "keyservice-client"))
ECARD_KEYSERVICE_CHECK_SECONDS = float(os.environ.get("ECARD_KEYSERVICE_CHECK_SECONDS", "60"))
CELERY_BEAT_SCHEDULE["check-bank-key-services"] = {  # noqa: F405 - defined in settings_audit
    "task": "issuers.check_key_services",
    "schedule": ECARD_KEYSERVICE_CHECK_SECONDS,
    "options": {"expires": ECARD_KEYSERVICE_CHECK_SECONDS},
}
