"""`hpo dashboard`: optuna-dashboard on a study's own storage, with notes that say what each trial was.

The server runs in this process (optuna-dashboard's WSGI app in a threaded ``wsgiref`` server), bound to
127.0.0.1 unless asked otherwise. It reads the same database ``hpo run`` writes (SQLite is in WAL mode), so
it can be started before, during or after a run. Before serving, and then every ``notes_every`` seconds,
it writes the study note and a note for every finished trial that has none: notes are written by this
process, never by the run, so they cost the run nothing. A note someone edited in the dashboard is never
overwritten.

The HTTP API is read-only unless ``allow_edits``: optuna-dashboard's API can delete and create studies and
``tell`` trials any value, so every request but GET/HEAD is refused (the notes hpo writes go to the storage
directly). Requests whose Host header is not an address of this server are refused too, so a web page
cannot reach the dashboard through a DNS name it rebinds to 127.0.0.1.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.trial import TrialState

from dashboards.notes import study_note, trial_note
from hpo.config import StudyConfig, load_study_file
from hpo.errors import HpoError, StorageError
from hpo.record import ATTR_DATA_CLEAN, TrialRecord
from hpo.storage import load_existing, redact, scrub_password
from hpo.store import study_store
from hpo.urls import url_password

A_STUDY_NOTE_VER = "hpo:study_note_ver"  # study system attr: the note version hpo wrote last
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Trial notes written before the server starts; more (a big study seen for the first time) are written by
# the background refresher while the dashboard is already up (each note costs a few small commits).
FOREGROUND_NOTES = 50


def _note_ver_key(trial_id: int | None) -> str:
    # optuna-dashboard's own key (optuna_dashboard._note.note_ver_key): a note exists once it is set.
    return "dashboard:note_ver" if trial_id is None else f"dashboard:{trial_id}:note_ver"


@dataclass
class NotesWritten:
    study: bool  # the study note was (re)written
    trials: int  # trial notes written
    metric_name: bool = False  # the objective was named (the dashboard shows it instead of "Objective 0")
    pending: int = 0  # finished trials still without a note (over ``limit``)


def refresh_notes(study: optuna.Study, cfg: StudyConfig, study_file: str, limit: int | None = None) -> NotesWritten:
    """Write the study note (unless someone edited it) and a note for each finished trial without one.

    ``limit`` caps the trial notes written by this call (oldest trials first); the rest are ``pending``.
    """
    from optuna_dashboard import get_note, save_note

    store = study_store(study)
    attrs = store.study_system_attrs()
    config = study.user_attrs.get("hpo:config") or cfg.model_dump(mode="json")
    text = study_note(config, study_file, redact(cfg.storage_url), study.user_attrs.get(ATTR_DATA_CLEAN))
    named = False
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in cfg.objectives])
        named = True
    wrote_study = False
    version = int(attrs.get(_note_ver_key(None), 0))
    if version in (0, attrs.get(A_STUDY_NOTE_VER)) and get_note(study) != text:
        save_note(study, text)
        store.set_study_system_attr(A_STUDY_NOTE_VER, version + 1)
        wrote_study = True
    # A plain sampler for the Trial handles save_note needs: building one calls sampler.before_trial.
    handle_study = optuna.Study(study.study_name, store.storage, sampler=optuna.samplers.RandomSampler())
    missing = [
        t for t in study.get_trials(deepcopy=False, states=FINISHED) if _note_ver_key(store.trial_id(t)) not in attrs
    ]
    todo = missing if limit is None else missing[:limit]
    for t in todo:
        body = trial_note(TrialRecord.from_trial(t), cfg.metric, cfg.fidelity.max_steps)
        save_note(store.handle(handle_study, t), body)
    return NotesWritten(wrote_study, len(todo), named, len(missing) - len(todo))


READ_METHODS = ("GET", "HEAD")
# Every interface: the Host header may name the machine in any of these ways.
_WILDCARD_HOSTS = ("0.0.0.0", "", "::")


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host header values a dashboard bound to host:port answers (lower case)."""
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    if host in _WILDCARD_HOSTS:
        names |= {socket.gethostname(), socket.getfqdn()}
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None)
        except OSError:
            infos = []
        for info in infos:
            addr = str(info[4][0])
            names.add(f"[{addr}]" if ":" in addr else addr)
    names = {n.lower() for n in names if n}
    out = {f"{n}:{port}" for n in names}
    if port == 80:  # browsers leave the default port out
        out |= names
    return out


class Guard:
    """WSGI middleware in front of optuna-dashboard: a wrong Host header gets 403, a request that could
    change the study (anything but GET/HEAD) gets 405 unless edits are allowed, and the storage password,
    should a study still hold it somewhere, never leaves in a response."""

    def __init__(self, app: Any, hosts: set[str], allow_edits: bool, password: str | None = None) -> None:
        self.app = app
        self.hosts = hosts
        self.allow_edits = allow_edits
        self.secrets = (
            []
            if not password
            else sorted(
                {password.encode(), quote(password, safe="").encode(), json.dumps(password)[1:-1].encode()},
                key=len,
                reverse=True,
            )
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = str(environ.get("HTTP_HOST", "")).lower()
        if host not in self.hosts:
            return _refuse(
                start_response, "403 Forbidden", f"unknown Host header {host!r}: use the address hpo printed"
            )
        if not self.allow_edits and environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS:
            return _refuse(
                start_response,
                "405 Method Not Allowed",
                "hpo dashboard is read-only; start it with --allow-edits to change the study",
                [("Allow", ", ".join(READ_METHODS))],
            )
        if not self.secrets or str(environ.get("PATH_INFO", "")).startswith("/static/"):
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        return self._scrubbed(environ, start_response)

    def _scrubbed(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        head: list[Any] = []
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            head[:] = [status, headers, exc_info]
            return chunks.append

        result = self.app(environ, capture)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        body = b"".join(chunks)
        for secret in self.secrets:
            body = body.replace(secret, b"***")
        status, headers, exc_info = head
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))], exc_info)
        return [body]


def _refuse(
    start_response: Callable[..., Any], status: str, why: str, extra: list[tuple[str, str]] | None = None
) -> list[bytes]:
    body = json.dumps({"reason": why}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(extra or [])]
    start_response(status, headers)
    return [body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise here
        pass


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class Dashboard:
    """A bound optuna-dashboard server; ``serve()`` blocks until Ctrl-C or ``shutdown()``."""

    def __init__(
        self,
        cfg: StudyConfig,
        study: optuna.Study,
        study_file: str,
        host: str,
        port: int,
        notes: bool,
        notes_every: float,
        allow_edits: bool = False,
    ) -> None:
        from optuna_dashboard import wsgi

        self.cfg = cfg
        self.study = study
        self.study_file = study_file
        self.host = host
        self.storage = redact(cfg.storage_url)
        self.notes = NotesWritten(False, 0)
        self.notes_every = notes_every
        self.write_notes = notes
        self.allow_edits = allow_edits
        if notes:
            try:
                scrub_password(study, cfg.storage_url)  # a study an older hpo run stored with its password
                self.notes = refresh_notes(study, cfg, study_file, limit=FOREGROUND_NOTES)
            except StorageError as e:  # e.g. a read-only file system: the dashboard can still show the study
                raise StorageError(f"{e}; --no-notes shows the study without writing notes") from None
        password = url_password(cfg.storage_url) if cfg.storage_url != "memory" else None
        store = study_store(study)
        app = wsgi(store.storage)
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        try:
            self.server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise HpoError(f"port {port} on {host} is already in use; choose another with --port") from None
            if isinstance(e, socket.gaierror):
                raise HpoError(f"cannot listen on host {host!r}: {e.strerror}") from None
            raise HpoError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.port = int(self.server.server_address[1])
        hosts = allowed_hosts(host, self.port)
        self.server.set_app(Guard(app, hosts, allow_edits, str(password) if password else None))
        self.url = _url(host, self.port) + "/dashboard/"
        self.study_url = f"{_url(host, self.port)}/dashboard/studies/{store.study_id}"
        self.public = host not in ("127.0.0.1", "localhost", "::1")
        self._stop = threading.Event()
        self._notes_thread: threading.Thread | None = None

    def _refresh(self) -> None:
        try:
            refresh_notes(self.study, self.cfg, self.study_file)
        except Exception as e:  # a busy or restarting database must not stop the dashboard
            print(f"hpo dashboard: notes not refreshed: {str(e).splitlines()[0]}", file=sys.stderr)

    def _notes_loop(self) -> None:
        if self.notes.pending:
            self._refresh()
        if self.notes_every <= 0:
            return
        while not self._stop.wait(self.notes_every):
            self._refresh()

    def serve(self) -> None:
        """Serve until Ctrl-C (or ``shutdown()`` from another thread); notes are refreshed meanwhile."""
        if self.write_notes and (self.notes_every > 0 or self.notes.pending):
            self._notes_thread = threading.Thread(target=self._notes_loop, name="hpo-notes", daemon=True)
            self._notes_thread.start()
        try:
            self.server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop.set()
            self.server.server_close()

    def shutdown(self) -> None:
        self._stop.set()
        self.server.shutdown()


def start(
    study_file: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    notes: bool = True,
    notes_every: float = 30.0,
    allow_edits: bool = False,
) -> Dashboard:
    """Open the study of a file, write its notes, and bind the dashboard (serving starts with ``serve()``)."""
    cfg = load_study_file(study_file)
    study = load_existing(cfg)
    return Dashboard(cfg, study, str(study_file), host, port, notes, notes_every, allow_edits)
