"""Real servers for the live site tests, started from Debian's packages: Redis, PostgreSQL, and
the site itself (gunicorn + a Celery worker) in subprocesses."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (OSError, requests.RequestException):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout_s} s")
        time.sleep(0.2)


@contextmanager
def redis_server() -> Iterator[str]:
    """A throw-away redis-server on a free port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
    )
    try:

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(ping, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed (Debian: postgresql)")
    return found[-1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a Unix socket (run as ``postgres`` when we are root);
    yields its DATABASE_URL."""
    root = Path(tempfile.mkdtemp(prefix="medquant-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True)  # noqa: E731
    try:
        run(
            _postgres_bin("initdb"), "-D", str(data), "-U", "medquant", "--auth=trust", "-E", "UTF8"
        )
        options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off"
        run(_postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "start", "-l",
            str(root / "log"))  # fmt: skip
        run(_postgres_bin("createdb"), "-h", str(root), "-p", str(port), "-U", "medquant",
            "medquant")  # fmt: skip
        yield f"postgresql://medquant@:{port}/medquant?host={root}"
    finally:
        if (data / "postmaster.pid").exists():
            run(_postgres_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


class LiveSite:
    """The site served by gunicorn with one Celery worker, sharing ``env`` (database, broker)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.url = ""
        self.procs: list[subprocess.Popen] = []

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def start(self, log_dir: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        bin_dir = Path(sys.executable).parent
        commands = {
            "worker": [str(bin_dir / "celery"), "-A", "leaderboard", "worker", "-Q", "cpu",
                       "-c", "1", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            "web": [str(bin_dir / "gunicorn"), "leaderboard.wsgi", "-b", f"127.0.0.1:{port}",
                    "-w", "2", "--access-logfile", "-"],
        }  # fmt: skip
        for name, command in commands.items():
            log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            self.procs.append(
                subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
            )
        wait_for(lambda: requests.get(self.url + "/", timeout=2).ok, "gunicorn")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)


TINY_TRACK = "tiny-unet-tiny-w8a8-simulated"


def site_env(var: Path) -> dict[str, str]:
    """Environment of a live site on the embedded stack with its state in ``var``."""
    env = os.environ | {
        "MEDQUANT_VAR_DIR": str(var),
        "OMP_NUM_THREADS": "1",
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "MEDQUANT_CACHE_URL"):
        env.pop(key, None)
    return env


@contextmanager
def live_site(dataset_dir: Path, model_dir: Path, var: Path, stack: str, quota: int):
    """The tiny W8A8 track served live. ``stack``: ``sqla+sqlite`` (the embedded default) or
    ``redis+postgres`` (both started here)."""
    var.mkdir(parents=True, exist_ok=True)
    model_dir = shutil.copytree(model_dir, var / "model")  # create_track adds model.onnx
    env = site_env(var)
    with ExitStack() as stack_:
        if stack == "redis+postgres":
            env["CELERY_BROKER_URL"] = stack_.enter_context(redis_server())
            env["DATABASE_URL"] = stack_.enter_context(postgres_server())
        site = LiveSite(env)
        site.manage("migrate", "--noinput")
        site.manage("import_dataset", str(dataset_dir), "--slug", "tiny")
        site.manage("create_track", "--dataset", "tiny", "--model", str(model_dir), "--wbits",
                    "8", "--abits", "8", "--quota", str(quota))  # fmt: skip
        site.start(var)
        stack_.callback(site.stop)
        yield site
