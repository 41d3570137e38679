"""The dashboard's web server: one static page, a JSON API over the run records, and /metrics.

``hpcfutures monitor serve`` runs :func:`serve_main`; tests and notebooks use
:class:`DashboardServer`.  The server is the standard library's threading HTTP server,
bound to 127.0.0.1 unless told otherwise (the page has no login: anyone who can reach the
port reads the records).  Each request opens the record it reads and closes it again,
so live runs are seen as the writer commits them and no SQLite connection is shared
between threads.  Answers for finished runs are kept in a small cache (they no longer
change); answers for live runs are kept for a moment that grows with what they cost, so a
dashboard left open on a 1,000,000-task run does not keep a CPU busy.

Routes: ``/`` (the page), ``/app.js``, ``/style.css``, ``/metrics`` (Prometheus text
format 0.0.4), and under ``/api/``: ``runs``, and ``run/RUN/`` followed by ``overview``,
``tasks?state=&func=&offset=&limit=``, ``task/ID``, ``failures``, ``blocks``, ``pools``,
``samples``, ``stream?since=``.  :func:`render_snapshot` writes the page with the answers
inlined, for ``hpcfutures monitor export --format html``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from . import query, webdata
from .schema import RecordError, connect_for_reading

logger = logging.getLogger(__name__)

#: Milliseconds between two polls of a live run's view.
POLL_MS = 2000
#: Answers kept in the cache at most.
CACHE_SIZE = 256
#: Runs of each record /metrics reports, newest first (live ones are reported in any case).
METRICS_RUNS = 20
#: Tasks whose detail a snapshot inlines at most (the first page, and failure examples).
SNAPSHOT_TASKS = 200

_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STATIC = {
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'"
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class BadRequest(ValueError):
    """A request's path or parameters are malformed (HTTP 400)."""


@dataclass(frozen=True)
class RunRef:
    """Where one run lives: its record file and id, and the key the page names it by."""

    key: str
    path: Path
    run_id: int


def _static_text(name: str) -> str:
    return (resources.files("hpcfutures.monitor") / "static" / name).read_text(encoding="utf-8")


def _canonical(path: str, params: dict[str, Any] | None = None) -> str:
    """A URL as the page writes it: parameters sorted, empty ones left out.

    The page builds API URLs the same way, which is what lets a snapshot answer them from
    a dict.
    """
    items = sorted((k, str(v)) for k, v in (params or {}).items() if v is not None and v != "")
    if not items:
        return path
    return path + "?" + "&".join(f"{k}={quote(v, safe=_JS_SAFE)}" for k, v in items)


# what JavaScript's encodeURIComponent leaves as it is, besides letters and digits
_JS_SAFE = "-_.!~*'()"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


def _page(config: dict[str, Any], *, inline: bool) -> str:
    """The page: index.html with its configuration, and its script and style inlined if asked."""
    html = _static_text("index.html")
    blob = json.dumps(config, separators=(",", ":"), default=str)
    # "</script" or "<!--" in a traceback would upset the HTML parser: no "<" at all then
    blob = blob.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    html = html.replace("{{CONFIG}}", blob)
    if inline:
        style = _static_text("style.css").replace("</style", "<\\/style")
        script = _static_text("app.js").replace("</script", "<\\/script")
        html = html.replace('<link rel="stylesheet" href="style.css">', f"<style>\n{style}\n</style>")
        html = html.replace('<script src="app.js"></script>', f"<script>\n{script}\n</script>")
    return html


# -- answers: one function per API view ------------------------------------------------------


def _int(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {text!r}") from None


def _float(params: dict[str, str], name: str) -> float | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{name} must be a finite number, not {text!r}")
    return value


def _only(params: dict[str, str], allowed: Iterable[str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}; this view takes {', '.join(allowed) or 'none'}")


def _answer(conn: sqlite3.Connection, run_id: int, view: str, rest: str, params: dict[str, str]) -> Any:
    """The JSON answer of one view of one run.

    Raises:
        BadRequest: a malformed parameter.
        query.NotFoundError: no such view, run or task.
    """
    if view == "task":
        _only(params, ())
        if not rest.isdigit():
            raise BadRequest(f"a task id is a whole number, not {rest!r}")
        return webdata.task(conn, run_id, int(rest))
    if rest:
        raise query.NotFoundError(f"no such view: {view}/{rest}")
    if view == "overview":
        _only(params, ())
        return webdata.overview(conn, run_id)
    if view == "tasks":
        _only(params, ("state", "func", "offset", "limit"))
        try:
            return webdata.tasks(
                conn,
                run_id,
                state=params.get("state") or None,
                func=params.get("func") or None,
                offset=_int(params, "offset", 0) or 0,
                limit=_int(params, "limit", 50) or 0,
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    if view == "stream":
        _only(params, ("since",))
        return webdata.stream(conn, run_id, since=_float(params, "since"))
    simple: dict[str, Callable[[sqlite3.Connection, int], Any]] = {
        "failures": webdata.failures,
        "blocks": webdata.blocks,
        "pools": webdata.pools,
        "samples": webdata.samples,
    }
    if view in simple:
        _only(params, ())
        return simple[view](conn, run_id)
    raise query.NotFoundError(f"no such view: {view}")


# -- the application: records, runs, cache ---------------------------------------------------


class _App:
    """What the request handlers share: the records served, the run keys, and the cache.

    ``_lock`` must be held while reading or changing ``_cache`` and ``_metrics``.
    """

    def __init__(self, records: Sequence[str | os.PathLike[str]] | None, default_run: str | None) -> None:
        self.records = None if records is None else [Path(p) for p in records]
        self.default_run = default_run
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, bytes]] = OrderedDict()
        self._metrics: OrderedDict[tuple[Any, ...], tuple[float, list[webdata.MetricSample]]] = OrderedDict()

    def paths(self) -> list[Path]:
        """The record files served now (a directory's new files appear as they are made)."""
        return query.find_records(self.records)

    @staticmethod
    def key(path: Path, run_id: int, several: bool) -> str:
        """How the page names a run: its number, or ``family:number`` when several records are served."""
        return f"{path.stem}:{run_id}" if several else str(run_id)

    def runs(self) -> list[dict[str, Any]]:
        """Every run of every record, newest first within a record, each with its key."""
        paths = self.paths()
        out: list[dict[str, Any]] = []
        for path in paths:
            try:
                conn = connect_for_reading(path)
            except RecordError as exc:
                logger.warning("dashboard: skipping %s: %s", path, exc)
                continue
            try:
                for run in webdata.runs(conn):
                    run["key"] = self.key(path, run["run_id"], len(paths) > 1)
                    out.append(run)
            finally:
                conn.close()
        return out

    def resolve(self, spec: str) -> RunRef:
        """The run a key (or any run spec of :func:`.query.resolve_run`) names.

        Raises:
            query.NotFoundError: no such run.
        """
        path, run_id = query.resolve_run(spec, self.records)
        return RunRef(self.key(path, run_id, len(self.paths()) > 1), path, run_id)

    def cached(self, key: tuple[Any, ...], settled: bool, compute: Callable[[], bytes]) -> bytes:
        """``compute()``, or its answer kept from before: forever for a run that has ended
        (``settled``), and for a live one as long as five times what it cost (at least a second)."""
        now = time.monotonic()
        with self._lock:
            found = self._cache.get(key)
            if found is not None and found[0] > now:
                self._cache.move_to_end(key)
                return found[1]
        began = time.monotonic()
        body = compute()
        cost = time.monotonic() - began
        expires = float("inf") if settled else began + max(1.0, 5 * cost)
        with self._lock:
            self._cache[key] = (expires, body)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return body

    def api(self, key: str, view: str, rest: str, params: dict[str, str]) -> bytes:
        """The JSON answer of ``/api/run/KEY/VIEW[/REST]?params``."""
        ref = self.resolve(key)
        conn = connect_for_reading(ref.path)
        try:
            info = query.run_info(conn, ref.run_id)
            if view == "stream" and params.get("since"):
                # incremental polls differ each time: not worth keeping
                return _json_bytes(_answer(conn, ref.run_id, view, rest, params))
            # the start time tells this run from one of a record made anew at the same path
            cache_key = (str(ref.path), ref.run_id, info.started, view, rest, tuple(sorted(params.items())))
            return self.cached(
                cache_key,
                webdata.settled(info),
                lambda: _json_bytes(_answer(conn, ref.run_id, view, rest, params)),
            )
        finally:
            conn.close()

    def metrics(self) -> str:
        """The Prometheus text: the run asked for, else the newest :data:`METRICS_RUNS` runs
        of each record and every live one.  Kept as :meth:`cached` keeps answers."""
        m = webdata.MetricsText()
        paths = self.paths()
        refs: list[RunRef] = []
        if self.default_run is not None:
            refs.append(self.resolve(self.default_run))
        else:
            for path in paths:
                try:
                    conn = connect_for_reading(path)
                except RecordError as exc:
                    logger.warning("dashboard: /metrics skips %s: %s", path, exc)
                    continue
                try:
                    listed = query.list_runs(conn)
                finally:
                    conn.close()
                chosen = [r for r in listed[:-METRICS_RUNS] if r.live] + listed[-METRICS_RUNS:]
                refs.extend(RunRef(self.key(path, r.run_id, len(paths) > 1), path, r.run_id) for r in chosen)
        for ref in refs:
            try:
                stat = ref.path.stat()
            except OSError:
                continue
            # the file's identity tells this run from one of a record made anew at the same path
            key = (str(ref.path), stat.st_dev, stat.st_ino, ref.run_id, ref.key)
            with self._lock:
                found = self._metrics.get(key)
            if found is not None and found[0] > time.monotonic():
                samples = found[1]
            else:
                try:
                    conn = connect_for_reading(ref.path)
                except RecordError as exc:
                    logger.warning("dashboard: /metrics skips %s: %s", ref.path, exc)
                    continue
                began = time.monotonic()
                try:
                    samples, settled = webdata.run_metrics(conn, ref.key, ref.run_id)
                finally:
                    conn.close()
                cost = time.monotonic() - began
                with self._lock:
                    self._metrics[key] = (float("inf") if settled else began + max(1.0, 5 * cost), samples)
                    while len(self._metrics) > 4 * METRICS_RUNS:
                        self._metrics.popitem(last=False)
            for name, labels, value in samples:
                m.add(name, labels, value)
        return m.text()


# -- HTTP --------------------------------------------------------------------------------------


_API = re.compile(r"^/api/run/(?P<key>[^/]+)/(?P<view>[a-z]+)(?:/(?P<rest>[^/]*))?$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "hpcfutures-dashboard"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("dashboard: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str, *, page: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if page:
            self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, _json_bytes({"error": message}), "application/json")

    def _host_allowed(self) -> bool:
        # A page elsewhere could rebind its DNS name to 127.0.0.1 and read the records;
        # a loopback server therefore answers only requests addressed to a loopback name.
        if not self.server.loopback:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
        return name.lower() in _LOOPBACK_NAMES

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        """Answer a GET: the page, its assets, /metrics or the JSON API."""
        app = self.server.app
        try:
            if not self._host_allowed():
                self._error(403, "this dashboard answers only on a loopback address")
                return
            url = urlsplit(self.path)
            try:
                fields = parse_qs(url.query, keep_blank_values=True, strict_parsing=False)
            except ValueError as exc:
                self._error(400, f"bad query string: {exc}")
                return
            if any(len(v) > 1 for v in fields.values()):
                self._error(400, "each parameter may be given once")
                return
            params = {k: v[0] for k, v in fields.items()}
            path = url.path
            if path in ("/", "/index.html"):
                config = {"poll": POLL_MS, "default_run": self._default_key(), "snapshot": None}
                self._send(
                    200, _page(config, inline=False).encode("utf-8"), "text/html; charset=utf-8", page=True
                )
            elif path in _STATIC:
                name, content_type = _STATIC[path]
                self._send(200, _static_text(name).encode("utf-8"), content_type)
            elif path == "/metrics":
                self._send(200, app.metrics().encode("utf-8"), _METRICS_TYPE)
            elif path == "/api/runs":
                _only(params, ())
                self._send(
                    200, _json_bytes({"runs": app.runs(), "default": self._default_key()}), "application/json"
                )
            else:
                match = _API.match(path)
                if match is None:
                    self._error(404, f"no such page: {path}")
                    return
                body = app.api(unquote(match["key"]), match["view"], unquote(match["rest"] or ""), params)
                self._send(200, body, "application/json")
        except BadRequest as exc:
            self._error(400, str(exc))
        except query.NotFoundError as exc:
            self._error(404, str(exc))
        except RecordError as exc:
            self._error(503, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception as exc:  # noqa: BLE001 - answer 500 and keep serving
            logger.exception("dashboard: %s failed", self.path)
            try:
                self._error(500, f"{type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _default_key(self) -> str | None:
        app = self.server.app
        if app.default_run is None:
            return None
        try:
            return app.resolve(app.default_run).key
        except RecordError:
            return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: _App
    loopback: bool


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardServer:
    """The dashboard served from a thread, for tests, notebooks and :func:`serve_main`.

    Args:
        records: run record files, or directories of them (``*.db``); None for the
            record directory (see :mod:`.location`).
        run: the run the page opens at (a spec as ``hpcfutures monitor`` takes: ``ID``,
            ``FAMILY``, ``FAMILY:ID``, a path); also the only run ``/metrics`` reports.
        host: the address to bind; loopback by default.  Any other address lets everyone
            who reaches it read the records.
        port: the port; 0 picks a free one (see :attr:`url`).

    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        records: Sequence[str | os.PathLike[str]] | None = None,
        *,
        run: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.app = _App(records, run)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.app = self.app
        self._httpd.loopback = _is_loopback(host)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's URL (opening at the run given, if one was)."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{port}/"
        run = self.app.default_run
        if run is not None:
            try:
                return base + f"#/run/{self.app.resolve(run).key}"
            except RecordError:
                pass
        return base

    def start(self) -> DashboardServer:
        """Serve from a daemon thread; return self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="hpcfutures-dashboard", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve from this thread until :meth:`close` (or Ctrl-C)."""
        self._httpd.serve_forever()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(10.0)
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the snapshot --------------------------------------------------------------------------------


def render_snapshot(path: str | os.PathLike[str], run_id: int) -> str:
    """The dashboard page of one run as one self-contained HTML file, its data inlined.

    The file holds the answers the views ask for first: overview, stream, failures, blocks,
    pools, samples, the first page of tasks (unfiltered and for each state), and the detail
    of up to :data:`SNAPSHOT_TASKS` tasks (those of the first page, of the first pages by
    state, and the failures' examples).  Other pages say they are not in the snapshot.

    Raises:
        RecordError: the record cannot be read, or has no such run
            (:class:`~.query.NotFoundError`).
    """
    path = Path(path)
    key = str(run_id)
    base = f"/api/run/{key}"
    data: dict[str, Any] = {}
    conn = connect_for_reading(path)
    try:
        run = webdata.run(conn, run_id)
        run["key"] = key
        data["/api/runs"] = {"runs": [run], "default": key}
        overview = webdata.overview(conn, run_id)
        data[f"{base}/overview"] = overview
        for view in ("stream", "failures", "blocks", "pools", "samples"):
            data[f"{base}/{view}"] = _answer(conn, run_id, view, "", {})
        first = webdata.tasks(conn, run_id)
        data[_canonical(f"{base}/tasks")] = first
        details = [t["task_id"] for t in first["tasks"]]
        for group in data[f"{base}/failures"]["groups"]:
            details.extend(group["task_ids"])
        for state, n in overview["counts"].items():
            if n:
                page = webdata.tasks(conn, run_id, state=state)
                data[_canonical(f"{base}/tasks", {"state": state})] = page
                details.extend(t["task_id"] for t in page["tasks"][:20])
        for task_id in list(dict.fromkeys(details))[:SNAPSHOT_TASKS]:
            data[f"{base}/task/{task_id}"] = webdata.task(conn, run_id, task_id)
    finally:
        conn.close()
    config = {"poll": 0, "default_run": key, "snapshot": data, "title": f"{run['family']} run {run_id}"}
    return _page(config, inline=True)


# -- the command -----------------------------------------------------------------------------


def _records_of(args: Any) -> list[Path] | None:
    """The record files or directories ``hpcfutures monitor`` was pointed at (None: the
    record directory)."""
    given: list[Path] = []
    for name in ("record", "dir"):
        value = getattr(args, name, None)
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        given.extend(Path(v).expanduser() for v in values if v)
    return given or None


def serve_main(args: Any) -> int:
    """``hpcfutures monitor serve [RUN]``: print the dashboard's URL and serve until Ctrl-C.

    ``args`` carries ``run`` (or None), ``host``, ``port`` and where the records are
    (``record``: a file, ``dir``: a directory; neither: the record directory).
    """
    import sys

    records = _records_of(args)
    host = getattr(args, "host", None) or "127.0.0.1"
    port = int(getattr(args, "port", 0) or 0)
    run = getattr(args, "run", None)
    try:
        query.find_records(records)
        if run is not None:
            query.resolve_run(run, records)
    except RecordError as exc:
        print(f"hpcfutures monitor serve: {exc}", file=sys.stderr)
        return 2
    try:
        server = DashboardServer(records, run=run, host=host, port=port)
    except OSError as exc:
        print(f"hpcfutures monitor serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    if not _is_loopback(host):
        print(
            f"hpcfutures monitor serve: listening on {host}, not loopback: anyone who reaches this "
            "port can read the run records (there is no login)",
            file=sys.stderr,
        )
    print(f"Dashboard: {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
