"""What can be checked before anything slow starts, and is: where the record lives (--storage),
the cluster (--address), what a trial asks of this machine, every output path, the data.

Each check raises StudyError with one line naming the option and, for a database, its URL
without the password. None imports torch or Ray; none creates or changes a file.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from hpo.errors import StudyError

CONNECT_TIMEOUT_S = 5  # a database or a cluster that does not answer in this is unreachable


def masked(url: str) -> str:
    """A database URL as it may be shown and written down: its password replaced by ***."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: nothing in it to hide
        return url


def check_output(path: str | os.PathLike, option: str, folder: bool = False) -> None:
    """Raise StudyError unless `path` (what `option` names) can be written: the folder it goes
    in exists (or, for `folder` outputs, its nearest existing parent) and is writable, and it
    is not the wrong kind of thing."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise StudyError(f"{path}: is {'a file' if folder else 'a folder'}, not "
                         f"{'a folder' if folder else 'a file'} ({option})")
    parent = path if folder else path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not folder and existing != parent:
        raise StudyError(f"{parent}: no such folder ({option})")
    if not existing.is_dir():
        raise StudyError(f"{existing}: is a file, not a folder ({option})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StudyError(f"{existing}: cannot write here (permission denied or read-only; "
                         f"{option})")


def check_data_path(data: str | None) -> None:
    """Raise StudyError when `data` (--data) names no file or folder; None passes."""
    if not data or data.startswith("torchvision:"):
        return  # a folder torchvision downloads into; it may not exist yet
    if not Path(data).exists():
        raise StudyError(f"{data}: does not exist (--data)")


def check_storage(url: str) -> None:
    """Raise StudyError, one line, unless the database at `url` (--storage) can be used: a
    URL SQLAlchemy knows, its driver installed, the server reachable, the user and password
    accepted, the database there."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    where = f"--storage {masked(url)}"
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except ArgumentError:
        raise StudyError(f"{where}: not a database URL (e.g. postgresql+psycopg://user:"
                         "password@host/database, or sqlite:///path/study.db)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            check_output(parsed.database, "--storage")
        return
    try:
        engine = sqlalchemy.create_engine(url, connect_args=_timeout(parsed))
    except NoSuchModuleError:
        raise StudyError(f"{where}: SQLAlchemy knows no database kind "
                         f"{parsed.drivername!r} (e.g. postgresql+psycopg, mysql+pymysql, "
                         "sqlite)") from None
    except ImportError as exc:
        module = getattr(exc, "name", None) or str(exc)
        hint = (" (or write postgresql+psycopg:// and pip install 'psycopg[binary]')"
                if parsed.get_backend_name() == "postgresql" and module != "psycopg" else "")
        raise StudyError(f"{where}: its Python driver {module} is not installed{hint}"
                         ) from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        raise StudyError(f"{where}: {_why(exc, parsed)}") from None
    finally:
        engine.dispose()


def _timeout(parsed) -> dict:
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    if backend == "mysql":
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def _why(exc: Exception, parsed) -> str:
    """A database's refusal in words."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    low = text.lower()
    if "password" in low or "authentication" in low or "access denied" in low:
        return f"the server refused user {parsed.username!r} or its password"
    if "does not exist" in low or "unknown database" in low:
        return (f"the server has no database {parsed.database!r} (create it, e.g. createdb "
                f"{parsed.database})")
    if any(w in low for w in ("refused", "timeout", "timed out", "could not translate",
                              "name or service", "no route", "unreachable", "could not connect")):
        return f"cannot reach the database server at {parsed.host}:{parsed.port or 'default'}" \
               f" ({_first(text)})"
    return f"cannot connect ({_first(text)})"


def _first(text: str) -> str:
    line = (text.splitlines() or [""])[0]
    return re.sub(r"\s+", " ", line)[:160]


def check_address(address: str) -> None:
    """Raise StudyError unless a Ray cluster answers at `address` (--address) within a few
    seconds: HOST:PORT or ray://HOST:PORT, or auto (RAY_ADDRESS, or the cluster `ray start`
    left on this machine)."""
    where = f"--address {address}"
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or _current_cluster()
        if not target:
            raise StudyError(f"{where}: no Ray cluster runs on this machine (start one with "
                             "`ray start --head`, or pass HOST:PORT)")
    hostport = target.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"{where}: not HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:PORT or "
                         "auto")
    why = _grpc_status(host, int(port))
    if why:
        raise StudyError(f"{where}: no Ray cluster answers at {host}:{port} ({why})")


def _grpc_status(host: str, port: int) -> str | None:
    """None when a gRPC server at host:port answers a call of Ray's cluster service with
    HTTP status 200 (even one that refuses it for want of a token), else why not. A bare TCP
    connect proves nothing where a proxy accepts every connection."""
    from hpo import compat

    if os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
        return None  # TLS before HTTP/2: a plain probe cannot speak to it; Ray will
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as s:
            s.settimeout(CONNECT_TIMEOUT_S)
            s.sendall(_h2_call(compat.RAY_PROBE_METHOD, f"{host}:{port}"))
            return _h2_answer(s)
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + \
        stream.to_bytes(4, "big") + payload


def _h2_call(path: str, authority: str) -> bytes:
    """An HTTP/2 connection preface and one gRPC call with an empty message: the headers in
    HPACK's plainest form (indexed or literal, never Huffman-coded)."""
    def text(s: str) -> bytes:
        return bytes([len(s)]) + s.encode()

    headers = (b"\x83\x86"  # :method POST, :scheme http
               + b"\x04" + text(path) + b"\x01" + text(authority)  # :path, :authority
               + b"\x0f\x10" + text("application/grpc")  # content-type
               + b"\x00" + text("te") + text("trailers"))
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
            + _frame(1, 0x4, 1, headers) + _frame(0, 0x1, 1, b"\x00" * 5))


def _h2_answer(s: socket.socket) -> str | None:
    """Read frames until the answer's headers: None for HTTP status 200, else why not."""
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                return "it closed the connection: not a Ray cluster"
            buf += chunk
        size, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
        payload, buf = buf[9:9 + size], buf[9 + size:]
        if kind == 7:  # GOAWAY
            return "it refused the call: not a Ray cluster"
        if kind == 1:  # HEADERS: skip padding length and priority fields when flagged
            block = payload[(1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0):]
            # HPACK's static table: index 8 is ":status: 200", sent as the byte 0x88
            return None if block[:1] == b"\x88" else "it answered, but not as Ray does"


def _current_cluster() -> str | None:
    # where `ray start --head` writes the address `ray.init(address="auto")` reads
    from hpo import compat

    return compat.local_cluster_address()


def local_gpus() -> int:
    """GPUs a Ray started on this machine would see (CUDA_VISIBLE_DEVICES, else the NVIDIA
    devices present), without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids)
    return sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))


def check_local_resources(options) -> None:
    """Without --address Ray starts on this machine, which no autoscaler grows: refuse a trial
    that asks for more CPUs or GPUs than it has."""
    if options.address:
        return
    cpus = options.num_cpus or os.cpu_count() or 1
    if options.cpus_per_trial > cpus:
        raise StudyError(f"--cpus-per-trial {options.cpus_per_trial:g}: a trial would need "
                         f"more CPUs than the {cpus} Ray has on this machine (--num-cpus); "
                         "pass --address for a cluster")
    gpus = local_gpus()
    want = options.gpus_per_trial or 0
    if want and want > max(gpus, 0) and not (0 < want <= 1 and gpus >= 1):
        have = f"only {gpus} GPU(s)" if gpus else "no GPU"
        raise StudyError(f"--gpus-per-trial {want:g}: this machine has {have}, and without "
                         "--address hpo runs trials here; pass --address for a cluster with "
                         "GPUs")
