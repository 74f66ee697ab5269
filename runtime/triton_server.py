"""Start the CPU Triton Inference Server of the nvidia-pytriton wheel on an sg2v model repository.

`python -m sg2v.runtime.triton_server REPO` (or `TritonServer(REPO)` as a context manager) runs the wheel's
`tritonserver` binary directly (not PyTriton's Python wrapper) with:
- a backend folder made for this run: the wheel's python backend with the stub built for this Python;
- `PYTHONPATH` and `SG2V_TRITON_SITE` set to this interpreter's site-packages, so the python stub imports
  numpy and sg2v from the same environment (`site.addsitedir` in the repository's model.py files also reads
  the .pth files of an editable install).
The server listens on loopback by default; it is stopped (terminate, then kill) when the context exits.
NVIDIA's tritonserver containers need none of this: install sg2v into the container's Python instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sg2v.errors import MissingDependencyError, Sg2vError

WHEEL_HINT = "pip install 'sg2v[serve]' (the nvidia-pytriton wheel ships a CPU tritonserver)"


def wheel_server() -> Path:
    """The `tritonserver` folder inside the installed nvidia-pytriton wheel."""
    found = importlib.util.find_spec("pytriton")
    if found is None or not found.submodule_search_locations:
        raise MissingDependencyError(f"nvidia-pytriton is not installed; {WHEEL_HINT}")
    root = Path(list(found.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise MissingDependencyError(f"{root} has no bin/tritonserver (an nvidia-pytriton without the server "
                                     f"binary); {WHEEL_HINT}")
    return root


def make_backend_dir(root: Path, into: Path) -> Path:
    """A backend folder at `into` holding the wheel's python backend and the stub for this Python."""
    stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise Sg2vError(f"the nvidia-pytriton wheel has no python stub for Python {sys.version_info[0]}."
                        f"{sys.version_info[1]} ({stub}); use a Python it has a stub for")
    python = into / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        target = python / src.name
        if not target.exists():
            target.symlink_to(src)
    return into


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_environment() -> dict[str, str]:
    """The environment the server's python stub needs to import numpy and sg2v from this interpreter."""
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["SG2V_TRITON_SITE"] = os.pathsep.join(paths)
    return env


class TritonServer:
    """The wheel's tritonserver on `repo`, on free loopback ports unless given; a context manager."""

    def __init__(self, repo: str | os.PathLike[str], http_port: int | None = None,
                 grpc_port: int | None = None, host: str = "127.0.0.1",
                 log_path: str | os.PathLike[str] | None = None, extra_args: list[str] | None = None):
        self.repo = Path(repo)
        self.host = host
        self._own_ports = http_port is None and grpc_port is None
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self._own_log = False  # the log lies in the run's temporary folder
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None

    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint (what `sg2v-run --server` and tritonclient.http take)."""
        return f"{self.host}:{self.http_port}"

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until it is ready (every model loaded); Sg2vError with the log's last
        lines if it exits or is not ready in `timeout` seconds. Ports it chose itself are chosen again (up
        to twice) when another process took one between the choice and the server's bind."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except Sg2vError as e:
                if not self._own_ports or "already in use" not in str(e) or attempt == 2:
                    raise
                self.http_port, self.grpc_port = free_port(), free_port()
        return self

    def _start(self, timeout: float) -> TritonServer:
        root = wheel_server()
        self._tmp = tempfile.mkdtemp(prefix="sg2v-triton-")
        backends = make_backend_dir(root, Path(self._tmp) / "backends")
        if self.log_path is None or self._own_log:
            self.log_path, self._own_log = Path(self._tmp) / "tritonserver.log", True
        cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={self.repo.resolve()}",
               f"--backend-directory={backends}", f"--http-address={self.host}",
               f"--http-port={self.http_port}", f"--grpc-address={self.host}",
               f"--grpc-port={self.grpc_port}",
               "--allow-metrics=false", "--exit-timeout-secs=2", *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=python_environment(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = "\n".join(self.log().splitlines()[-15:])
                self.stop()
                raise Sg2vError(f"tritonserver exited with status {self.process.returncode} before it was "
                                f"ready; its log's last lines:\n{tail}")
            if self.ready():
                return self
            time.sleep(0.25)
        tail = "\n".join(self.log().splitlines()[-15:])
        self.stop()
        raise Sg2vError(f"tritonserver was not ready after {timeout:.0f} s; its log's last lines:\n{tail}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s) and remove the run's temporary folder."""
        p = self.process
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # python stubs left in the server's own session
        if self._tmp is not None:  # the backend folder (and the log, unless log_path was given)
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sg2v.runtime.triton_server",
                                description="Serve an sg2v model repository (sg2v-export triton "
                                            "--stage-backend python) on the CPU tritonserver of the "
                                            "nvidia-pytriton wheel.")
    p.add_argument("repo", help="model repository written by sg2v-export triton")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--log", default=None,
                   help="server log file (default: a temporary file, removed when the server stops)")
    from sg2v.options import run_cli

    def serve() -> int:
        args = p.parse_args(argv)
        server = TritonServer(args.repo, args.http_port, args.grpc_port, args.host, args.log)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out (as Ctrl-C)
        try:
            server.start()
            print(f"sg2v: tritonserver ready at http://{server.url} (log {server.log_path}); Ctrl-C stops it",
                  flush=True)
            process = server.process
            assert process is not None  # start() returned: the server is up
            while process.poll() is None:
                time.sleep(1)
            print(f"sg2v: tritonserver exited with status {process.returncode}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # Ctrl-C is how a served session ends
            return 0
        finally:
            server.stop()

    return run_cli(p.prog, serve)


if __name__ == "__main__":
    sys.exit(main())
