"""Storage URLs: how hpo names, hides and opens them, without importing Optuna or SQLAlchemy's ORM.

Every command reads these (``hpo status`` among the first), and every message that names a storage goes
through ``redact`` or ``where``, so that a password in a URL is never printed, logged or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url


def redact(url: str) -> str:
    """The URL with its password hidden (``user:***@host``, and a ``password=`` query argument, which libpq
    accepts too): safe for logs, reports and exports."""
    try:
        u = make_url(url)
    except Exception:
        return "<storage>"
    if "password" in u.query:
        u = u.update_query_dict({"password": "***"})
    return u.render_as_string(hide_password=True) if u.password or "password" in u.query else url


def url_password(url: str) -> str | None:
    """The password a storage URL carries (``user:PASSWORD@host`` or ``?password=PASSWORD``), if any."""
    try:
        u = make_url(url)
    except Exception:
        return None
    if u.password:
        return str(u.password)
    given = u.query.get("password")
    value = given[0] if isinstance(given, tuple) else given
    return str(value) if value else None


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL; None for other databases and in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def missing_sqlite(url: str) -> str | None:
    """``no study yet: URL does not exist[ in CWD]`` when the URL's SQLite file is not there; None otherwise.

    A relative SQLite path (the default runs/<name>.db) is relative to the working directory, not to the
    study file: the message says where it was looked for.
    """
    path = sqlite_path(url)
    if path is None or path.exists():
        return None
    return f"no study yet: {redact(url)} does not exist" + ("" if path.is_absolute() else f" in {Path.cwd()}")


def uri_path(database: str) -> str:
    """The file named by an SQLite ``file:`` URI."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(database).path)


def where(url: str) -> str:
    """How errors name a storage: the SQLite file's path, or the URL with its password hidden."""
    try:
        u = make_url(url)
    except Exception:
        return redact(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database.startswith("file:"):
        return uri_path(u.database)
    path = sqlite_path(url)
    return str(path) if path is not None else redact(url)


def writable(path: Path) -> bool:
    """Whether SQLite may write the file and its folder (where its -wal and -shm files live). False on a
    read-only file system, a read-only file, or a folder the user cannot write."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def sqlite_uri(path: Path, writable: bool) -> str:
    """A URI that opens an existing SQLite file without creating anything. Where SQLite cannot write (a
    read-only file system or file), a WAL file is read through its existing -wal/-shm files, or, when
    there are none (the last writer closed cleanly, so the file holds everything), opened immutable:
    SQLite could not create them."""
    from urllib.parse import quote

    uri = f"file:{quote(str(path.absolute()), safe='/')}?mode={'rw' if writable else 'ro'}"
    if not writable and not (Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()):
        uri += "&immutable=1"
    return uri


def reader_url(url: str) -> str:
    """The URL through which read-only commands read a storage: the URL itself, except for an SQLite file
    that cannot be written (read-only file system or file), which is opened read-only (``sqlite_uri``)."""
    path = sqlite_path(url)
    if path is None or not path.exists() or writable(path):
        return url
    database, _, query = sqlite_uri(path, writable=False).partition("?")
    params = dict(kv.split("=", 1) for kv in query.split("&"))
    return URL.create("sqlite", database=database, query={**params, "uri": "true"}).render_as_string(
        hide_password=False
    )
