"""A ``redis-server`` child process for development, tests and benchmarks: loopback only, no persistence by default.

Production runs its own Redis; this is what ``make redis``, the tests and the benchmarks start.
The server is Debian's (or any) ``redis-server`` binary found on ``PATH``; it is never downloaded.
It binds 127.0.0.1 (``protected-mode`` on), takes a free port unless given one, and writes
nothing to disk unless ``data_dir`` is given (then RDB snapshots go there).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

log = logging.getLogger(__name__)

INSTALL_HINT = "install Redis from your system's packages (Debian/Ubuntu: `apt-get install redis-server`)"


class RedisUnavailable(RuntimeError):
    """No ``redis-server`` binary, or it did not start; the message says which and what to do."""


def find_redis_server(executable: Optional[str] = None) -> str:
    """The path of ``redis-server`` (``executable``, ``$TFREC_REDIS_SERVER`` or ``PATH``)."""
    name = executable or os.environ.get("TFREC_REDIS_SERVER") or "redis-server"
    found = shutil.which(name)
    if found is None:
        raise RedisUnavailable("no redis-server found (looked for %r): %s" % (name, INSTALL_HINT))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``host:port`` (a free loopback port by default); a context manager.

    ``maxmemory_mb`` caps its memory (allkeys-lru eviction: it holds caches and capped histories,
    never data that exists nowhere else). ``stop()`` shuts it down; ``start()`` after ``stop()``
    starts it again on the same port (what reconnect tests need).
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", data_dir: Optional[Union[str, Path]] = None,
                 executable: Optional[str] = None, maxmemory_mb: int = 256, password: Optional[str] = None) -> None:
        if not 0 <= int(port) <= 65535:
            raise ValueError("port must be in [0, 65535], got %r" % port)
        if int(maxmemory_mb) < 1:
            raise ValueError("maxmemory_mb must be >= 1, got %r" % maxmemory_mb)
        self.executable = find_redis_server(executable)
        self.host = host
        self.port = int(port) or free_port(host)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.maxmemory_mb = int(maxmemory_mb)
        self.password = password
        self._process: Optional[subprocess.Popen] = None
        self._workdir: Optional[str] = None

    @property
    def url(self) -> str:
        """``redis://host:port/0`` (with the password when one is set)."""
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s%s:%d/0" % (auth, self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _arguments(self) -> list[str]:
        args = [self.executable, "--bind", self.host, "--port", str(self.port), "--protected-mode", "yes",
                "--maxmemory", "%dmb" % self.maxmemory_mb, "--maxmemory-policy", "allkeys-lru",
                "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", "--logfile", ""]
        if self.data_dir is None:
            args += ["--save", ""]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.data_dir)]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        if self.data_dir is None and self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="tfrec-redis-")
        cwd = str(self.data_dir) if self.data_dir is not None else self._workdir
        self._process = subprocess.Popen(self._arguments(), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._process.stdout.read().decode("utf-8", "replace") if self._process.stdout else ""
                raise RedisUnavailable("redis-server exited with code %s on %s:%d: %s"
                                       % (self._process.returncode, self.host, self.port, output.strip()[-500:]))
            if self.ping():
                log.info("redis-server listening on %s:%d", self.host, self.port)
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable("redis-server did not answer on %s:%d within %.0f s" % (self.host, self.port, timeout))

    def ping(self) -> bool:
        """Whether the server answers PING now (raw RESP, so this works without the redis package)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(self.password), self.password.encode()))
                    sock.recv(64)
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def close(self) -> None:
        """Stop the server and remove its temporary working folder."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "RedisServer(%s:%d, %s)" % (self.host, self.port, "running" if self.running else "stopped")
