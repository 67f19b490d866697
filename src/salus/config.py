"""One typed settings object, read once at the door and passed down.

Values come from ``SALUS_*`` environment variables, then command-line flags
override them. Nothing below the doors reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def auth_mode(value: str, what: str = "SALUS_AUTH") -> str:
    """``off`` or ``smart`` (any case); a ``ValueError`` naming ``what`` and the choices otherwise."""
    mode = value.strip().lower()
    if mode not in ("off", "smart"):
        raise ValueError(f"{what} must be 'off' or 'smart', not {value!r}")
    return mode


def _url(value: str) -> str:
    return value.rstrip("/")


# SALUS_* variable -> Settings field, and how its text becomes the field's value
_ENV: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("SALUS_DATA_DIR", "data_dir", Path),
    ("SALUS_DATABASE_URL", "database_url", str),
    ("SALUS_PUBLIC_BASE_URL", "public_base_url", _url),
    ("SALUS_MAX_BODY_BYTES", "max_body_bytes", int),
    ("SALUS_REFERENTIAL_INTEGRITY", "referential_integrity", _bool),
    ("SALUS_POOL_SIZE", "pool_size", int),
    ("SALUS_AUTH", "auth", auth_mode),
    ("SALUS_AUTH_ISSUER", "auth_issuer", _url),
    ("SALUS_ACCESS_TOKEN_TTL", "access_token_ttl", int),
    ("SALUS_REFRESH_TOKEN_TTL", "refresh_token_ttl", int),
    ("SALUS_OIDC_ISSUER", "external_oidc_issuer", _url),
    ("SALUS_OIDC_JWKS", "external_oidc_jwks", str),
    ("SALUS_AUDIT", "audit", _bool),
    ("SALUS_MASTER_KEY", "master_key", str),
    ("SALUS_MASTER_KEY_FILE", "master_key_file", Path),
)


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one Salus instance."""

    data_dir: Path = Path("salus-data")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    base_path: str = "/fhir"
    public_base_url: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    referential_integrity: bool = True
    default_page_size: int = 20
    max_page_size: int = 1000
    pool_size: int = 10
    # SMART on FHIR authorization (salus.security): "off" (loopback default) or "smart"
    auth: str = "off"
    auth_issuer: str | None = None  # None: the FHIR base URL
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 30 * 24 * 3600
    external_oidc_issuer: str | None = None
    external_oidc_jwks: str | None = None  # a JWKS URL or a file path
    # the tamper-evident audit trail (salus.security.audit); None: on exactly when auth is on
    audit: bool | None = None
    # encryption at rest (salus.store.crypto): base64 master keys, the current one first, or a file of them
    master_key: str | None = None
    master_key_file: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``SALUS_*`` variables, with non-None keyword overrides on top."""
        env = dict(os.environ if env is None else env)
        s = cls()
        for var, name, convert in _ENV:
            if v := env.get(var):
                s = replace(s, **{name: convert(v)})
        clean = {k: v for k, v in overrides.items() if v is not None}
        for name in ("data_dir", "master_key_file"):
            if name in clean:
                clean[name] = Path(clean[name])  # type: ignore[arg-type]
        return replace(s, **clean)  # type: ignore[arg-type]

    @property
    def audit_enabled(self) -> bool:
        """Whether interactions are audited: as configured, else whenever security is on."""
        return self.audit if self.audit is not None else self.auth != "off"

    @property
    def effective_database_url(self) -> str:
        """The database to use: ``SALUS_DATABASE_URL`` if set, else SQLite inside the data dir."""
        return self.database_url or f"sqlite:///{self.data_dir / 'salus.db'}"
