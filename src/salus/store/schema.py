"""The database schema, one definition rendered for SQLite and PostgreSQL.

Layout (after Blaze): ``resources`` holds one row per logical resource (its
current version and whether it is deleted); ``resource_versions`` holds every
version's body, ordered by a global ``seq`` that history paging uses as a
stable cursor; ``idx_*`` hold one row per value extracted by a search
parameter, for the current version only, written in the same transaction as
the resource. ``grp`` ties together the component rows of one composite value.
"""

from __future__ import annotations

SCHEMA_VERSION = 3
# 1 -> 2: every text column of PostgreSQL in the "C" collation (version 1 had it on the index tables only,
# so joins between resources and index rows compared in two collations and could not use the indexes)
# 2 -> 3: audit_log indexed by event_id (AuditEvent reads through the API; the CREATE adds it)

META_DDL = "CREATE TABLE IF NOT EXISTS salus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class SchemaTooNew(RuntimeError):
    """The database was written by a newer Salus: upgrading it is that version's job."""

# (table, columns after rid/res_type/param, indexes); column types are abstract:
# T = text, F = float, I = integer
INDEX_TABLES: dict[str, list[tuple[str, str]]] = {
    "idx_string": [("norm", "T"), ("exact", "T")],
    "idx_token": [("system", "T"), ("code", "T"), ("text", "T")],
    "idx_reference": [("target_type", "T"), ("target_id", "T"), ("target_version", "T"), ("url", "T")],
    "idx_date": [("low", "T"), ("high", "T")],
    "idx_number": [("low", "F"), ("high", "F")],
    "idx_quantity": [("system", "T"), ("code", "T"), ("low", "F"), ("high", "F")],
    "idx_uri": [("value", "T")],
    # every local reference of the resource, search parameter or not: what referential
    # integrity checks on delete ("who still points here?"); param is unused ('')
    "refs": [("target_type", "T"), ("target_id", "T")],
}

# secondary indexes designed for FHIR's queries: a selective lookup by value within
# (type, parameter), and a lookup by rid to replace a resource's rows on update
INDEX_KEYS: dict[str, list[list[str]]] = {
    "idx_string": [["res_type", "param", "norm"]],
    "idx_token": [["res_type", "param", "code", "system"]],
    "idx_reference": [["res_type", "param", "target_id", "target_type"], ["target_type", "target_id"]],
    "idx_date": [["res_type", "param", "low"], ["res_type", "param", "high"]],
    "idx_number": [["res_type", "param", "low"]],
    "idx_quantity": [["res_type", "param", "code", "low"]],
    "idx_uri": [["res_type", "param", "value"]],
    "refs": [["target_type", "target_id"]],
}

_TYPES = {
    "sqlite": {"T": "TEXT", "F": "REAL", "I": "INTEGER", "PK": "INTEGER PRIMARY KEY", "B": "INTEGER"},
    # "C" collation: byte order, so the prefix ranges search compiles are exact whatever the database's locale;
    # every text column uses it, so joins between resources and index rows compare in one collation and
    # can use the indexes on both sides
    "postgresql": {"T": 'TEXT COLLATE "C"', "F": "DOUBLE PRECISION", "I": "BIGINT", "PK": "BIGSERIAL PRIMARY KEY", "B": "BOOLEAN"},
}


def ddl(dialect: str) -> list[str]:
    """Every CREATE statement for ``dialect`` ('sqlite' or 'postgresql'), idempotent."""
    t = _TYPES[dialect]
    stmts = [
        META_DDL,
        f"""CREATE TABLE IF NOT EXISTS resources (
            rid {t['PK']},
            res_type {t['T']} NOT NULL,
            res_id {t['T']} NOT NULL,
            version {t['I']} NOT NULL,
            last_updated {t['T']} NOT NULL,
            deleted {t['B']} NOT NULL,
            UNIQUE (res_type, res_id))""",
        "CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (res_type, last_updated)",
        f"""CREATE TABLE IF NOT EXISTS resource_versions (
            seq {t['PK']},
            rid {t['I']} NOT NULL,
            version {t['I']} NOT NULL,
            res_type {t['T']} NOT NULL,
            res_id {t['T']} NOT NULL,
            last_updated {t['T']} NOT NULL,
            method TEXT NOT NULL,
            body TEXT,
            UNIQUE (rid, version))""",
        "CREATE INDEX IF NOT EXISTS versions_type_seq ON resource_versions (res_type, seq)",
        "CREATE INDEX IF NOT EXISTS versions_updated ON resource_versions (last_updated)",
    ]
    for table, cols in INDEX_TABLES.items():
        colsql = ", ".join(f"{name} {t[kind]}" for name, kind in cols)
        stmts.append(
            f"CREATE TABLE IF NOT EXISTS {table} (rid {t['I']} NOT NULL, res_type {t['T']} NOT NULL, "
            f"param {t['T']} NOT NULL, grp {t['I']} NOT NULL DEFAULT 0, {colsql})"
        )
        stmts.append(f"CREATE INDEX IF NOT EXISTS {table}_rid ON {table} (rid)")
        for i, key in enumerate(INDEX_KEYS[table]):
            stmts.append(f"CREATE INDEX IF NOT EXISTS {table}_k{i} ON {table} ({', '.join(key)})")
    # custom search parameters (salus.search.registry): one row per (type, code) whose definition differs from
    # R4's, with its index state; every process reads it, so a restart or another worker agrees on what is ready
    stmts.append(
        f"""CREATE TABLE IF NOT EXISTS search_param_state (
            base TEXT NOT NULL,
            code TEXT NOT NULL,
            url TEXT NOT NULL,
            sp_id TEXT,
            definition TEXT,
            state TEXT NOT NULL,
            generation {t['I']} NOT NULL,
            updated TEXT NOT NULL,
            PRIMARY KEY (base, code))"""
    )
    stmts += _security_ddl(t)
    stmts += _audit_ddl(t)
    # encryption at rest (salus.store.crypto): data keys, each wrapped by the master key it names by fingerprint
    stmts.append(
        f"""CREATE TABLE IF NOT EXISTS data_keys (
            kid {t['I']} PRIMARY KEY,
            purpose {t['T']} NOT NULL,
            master {t['T']} NOT NULL,
            wrapped {t['T']} NOT NULL,
            created {t['T']} NOT NULL)"""
    )
    return stmts


def _security_ddl(t: dict[str, str]) -> list[str]:
    """Accounts of the SMART authorization server (salus.security): users, clients, codes, tokens, keys.

    Times are epoch seconds (integers): they are compared, never displayed. Secrets (passwords, client
    secrets, codes, refresh tokens) are stored only as hashes; access tokens by their ``jti``.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS auth_users (
            username {t['T']} PRIMARY KEY,
            password_hash {t['T']} NOT NULL,
            role {t['T']} NOT NULL,
            fhir_user {t['T']},
            created {t['I']} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS auth_clients (
            client_id {t['T']} PRIMARY KEY,
            kind {t['T']} NOT NULL,
            scope {t['T']} NOT NULL,
            redirect_uris {t['T']} NOT NULL,
            secret_hash {t['T']},
            jwks {t['T']},
            created {t['I']} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS auth_keys (
            seq {t['PK']},
            kid {t['T']} NOT NULL UNIQUE,
            alg {t['T']} NOT NULL,
            private_jwk {t['T']} NOT NULL,
            created {t['I']} NOT NULL)""",
        # one row per authorization code (by hash); used flips once, atomically, so a code is single use
        f"""CREATE TABLE IF NOT EXISTS auth_codes (
            code_hash {t['T']} PRIMARY KEY,
            client_id {t['T']} NOT NULL,
            redirect_uri {t['T']} NOT NULL,
            code_challenge {t['T']} NOT NULL,
            scope {t['T']} NOT NULL,
            username {t['T']} NOT NULL,
            role {t['T']},
            fhir_user {t['T']},
            patient {t['T']},
            nonce {t['T']},
            expires {t['I']} NOT NULL,
            used {t['I']} NOT NULL DEFAULT 0)""",
        # every issued token: access tokens by jti, refresh tokens by hash; grant_id ties together the tokens
        # of one authorization, so a replayed code or refresh token revokes all of them at once
        f"""CREATE TABLE IF NOT EXISTS auth_tokens (
            token_id {t['T']} PRIMARY KEY,
            kind {t['T']} NOT NULL,
            grant_id {t['T']} NOT NULL,
            client_id {t['T']} NOT NULL,
            subject {t['T']} NOT NULL,
            role {t['T']},
            fhir_user {t['T']},
            patient {t['T']},
            scope {t['T']} NOT NULL,
            issued {t['I']} NOT NULL,
            expires {t['I']} NOT NULL,
            revoked {t['I']} NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS auth_tokens_grant ON auth_tokens (grant_id)",
        "CREATE INDEX IF NOT EXISTS auth_tokens_expires ON auth_tokens (expires)",
        # jti of client assertions (SMART Backend Services), kept until they expire, so none is replayed
        f"""CREATE TABLE IF NOT EXISTS auth_assertions (
            client_id {t['T']} NOT NULL,
            jti {t['T']} NOT NULL,
            expires {t['I']} NOT NULL,
            PRIMARY KEY (client_id, jti))""",
    ]


def _audit_ddl(t: dict[str, str]) -> list[str]:
    """The tamper-evident audit trail (salus.security.audit): one row per AuditEvent, hash-chained.

    ``seq`` is a plain primary key, not an auto-increment: the appender assigns it under the chain lock,
    so seq order is chain order (a sequence could hand out numbers that commit out of order).
    The chain head (``seq:hash``) lives in ``salus_meta`` key ``audit_head``, so a cut tail is detected.
    """
    return [
        f"""CREATE TABLE IF NOT EXISTS audit_log (
            seq {t['I']} PRIMARY KEY,
            event_id {t['T']} NOT NULL,
            recorded {t['T']} NOT NULL,
            body {t['T']} NOT NULL,
            prev_hash {t['T']} NOT NULL,
            hash {t['T']} NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS audit_log_recorded ON audit_log (recorded)",
        # GET AuditEvent/[id] (salus.security.audit_query.read)
        "CREATE INDEX IF NOT EXISTS audit_log_event_id ON audit_log (event_id)",
    ]


_TEXT_COLUMNS = {
    "resources": ["res_type", "res_id", "last_updated"],
    "resource_versions": ["res_type", "res_id", "last_updated"],
    **{table: ["res_type", "param", *(c for c, kind in cols if kind == "T")] for table, cols in INDEX_TABLES.items()},
}


def migration(dialect: str, found: str | None) -> list[str]:
    """The statements that take a database at schema version ``found`` (None: empty) to ``SCHEMA_VERSION``.

    The CREATEs come first (idempotent, they add what a version introduced);
    then the changes to what already exists, oldest first.
    """
    version = None if found is None else int(found)
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this Salus understands ({SCHEMA_VERSION}); "
            "upgrade Salus"
        )
    stmts = ddl(dialect)
    if version is not None and version < 2 and dialect == "postgresql":
        collate = _TYPES["postgresql"]["T"]
        for table, columns in _TEXT_COLUMNS.items():
            alters = ", ".join(f"ALTER COLUMN {c} TYPE {collate}" for c in columns)
            stmts.append(f"ALTER TABLE {table} {alters}")
    return stmts


def index_columns(table: str) -> list[str]:
    """Column names of an index table in insert order (rid, res_type, param, grp, values...)."""
    return ["rid", "res_type", "param", "grp", *(c for c, _ in INDEX_TABLES[table])]
