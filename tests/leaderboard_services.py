"""Real servers for the live site tests, started from Debian's packages: Redis, PostgreSQL, and
the site itself (gunicorn + a Celery worker) in subprocesses."""

from __future__ import annotations

import glob
import os
import re
import secrets
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

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME

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
    """The site served by gunicorn (``web_threads`` threads per worker) with one Celery worker
    (researchers' and baselines' queues) and the reconciler, sharing ``env`` (database, broker);
    with ``baseline_worker`` the baselines' queue has a worker of its own, as in ``make run``."""

    def __init__(
        self,
        env: dict[str, str],
        web_threads: int = 1,
        worker_concurrency: int = 1,
        baseline_worker: bool = False,
    ):
        self.env = env
        self.url = ""
        self.web_threads = web_threads
        self.worker_concurrency = worker_concurrency
        self.baseline_worker = baseline_worker
        self.procs: list[subprocess.Popen] = []
        self.log_dir: Path | None = None

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def worker_command(self, baselines: bool = False) -> list[str]:
        """The researchers' worker (also serving the baselines without ``baseline_worker``), or
        with ``baselines`` the baselines' own."""
        queues = "cpu" if self.baseline_worker else "cpu,cpu-baselines"
        name = "baselines@%h" if baselines else "celery@%h"
        return [str(Path(sys.executable).parent / "celery"), "-A", "leaderboard", "worker", "-Q",
                "cpu-baselines" if baselines else queues, "-n", name, "-c",
                str(self.worker_concurrency), "--without-gossip", "--without-mingle",
                "--loglevel", "INFO"]  # fmt: skip

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "a")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    def kill_worker(self) -> None:
        """SIGKILL the Celery worker's whole process group (main process and pool children)."""
        worker = self.procs[0]
        os.killpg(worker.pid, 9)
        worker.wait(timeout=30)

    def restart_worker(self) -> None:
        self.procs[0] = self._spawn("worker", self.worker_command())

    def start(self, log_dir: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        bin_dir = Path(sys.executable).parent
        commands = {
            "worker": self.worker_command(),
            "web": [str(bin_dir / "gunicorn"), "leaderboard.wsgi", "-b", f"127.0.0.1:{port}",
                    "-w", "2", "--threads", str(self.web_threads), "--access-logfile", "-"],
            "reconciler": [sys.executable, "manage.py", "reconcile", "--every", "5"],
        }  # fmt: skip
        if self.baseline_worker:
            commands["baselines"] = self.worker_command(baselines=True)
        for name, command in commands.items():
            self.procs.append(self._spawn(name, command))
        wait_for(lambda: requests.get(self.url + "/", timeout=2).ok, "gunicorn")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


TINY_TRACK = "tiny-unet-tiny-w8a8-simulated"


def site_env(var: Path) -> dict[str, str]:
    """Environment of a live site on the embedded stack with its state in ``var``."""
    env = os.environ | {
        "MEDQUANT_VAR_DIR": str(var),
        "OMP_NUM_THREADS": "1",
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    }
    for key in ("DATABASE_URL", "CELERY_BROKER_URL", "MEDQUANT_CACHE_URL"):
        env.pop(key, None)
    return env


@contextmanager
def live_site(
    dataset_dir: Path,
    model_dir: Path,
    var: Path,
    stack: str,
    quota: int,
    *,
    servers: tuple[RedisServer, PostgresServer] | None = None,
    collect_static: bool = False,
    track_options: tuple[str, ...] = (),
    **site_options,
):
    """The tiny W8A8 track served live. ``stack``: ``sqla+sqlite`` (the embedded default) or
    ``redis+postgres`` (both started here, or the running ``servers`` a test controls);
    ``collect_static``: static files collected (with their compressed forms) before the server
    starts, as ``make run`` does; ``track_options``: more ``create_track`` options;
    ``site_options`` go to ``LiveSite``."""
    var.mkdir(parents=True, exist_ok=True)
    model_dir = shutil.copytree(model_dir, var / "model")  # create_track adds model.onnx
    env = site_env(var)
    with ExitStack() as stack_:
        if stack == "redis+postgres" and servers:
            env["CELERY_BROKER_URL"], env["DATABASE_URL"] = (server.url for server in servers)
        elif stack == "redis+postgres":
            env["CELERY_BROKER_URL"] = stack_.enter_context(redis_server())
            env["DATABASE_URL"] = stack_.enter_context(postgres_server())
        site = LiveSite(env, **site_options)
        site.manage("migrate", "--noinput")
        site.manage("import_dataset", str(dataset_dir), "--slug", "tiny")
        site.manage("create_track", "--dataset", "tiny", "--model", str(model_dir), "--wbits",
                    "8", "--abits", "8", "--quota", str(quota), *track_options)  # fmt: skip
        if collect_static:
            site.manage("collectstatic", "--noinput")
        site.start(var)
        stack_.callback(site.stop)
        yield site


def sign_up_and_create_token(site: LiveSite, username: str) -> tuple[requests.Session, str]:
    """Sign up through the form, then create an API token on the token page."""
    browser = requests.Session()
    browser.get(f"{site.url}/signup/")
    form = {"username": username, "password1": "Sup3r-secret-pw", "password2": "Sup3r-secret-pw",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"]}  # fmt: skip
    response = browser.post(f"{site.url}/signup/", data=form, headers={"Referer": site.url})
    assert response.ok and f"Log out {username}" in response.text
    page = browser.post(
        f"{site.url}/tokens/",
        data={"name": "ci", "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": site.url},
    ).text
    return browser, re.search(r'id="new-token">(mq_[^<]+)</pre>', page).group(1)


def submit(site: LiveSite, token: str | None, ckpt: Path, method: str, track: str = TINY_TRACK):
    """POST a checkpoint folder as a manifest + weights pair through the API."""
    headers = {"Authorization": f"Token {token}"} if token else {}
    files = {"manifest": (MANIFEST_NAME, (ckpt / MANIFEST_NAME).read_bytes()),
             "weights": (WEIGHTS_NAME, (ckpt / WEIGHTS_NAME).read_bytes())}  # fmt: skip
    data = {"track": track, "kind": "checkpoint", "method": method}
    return requests.post(f"{site.url}/api/v1/submissions/", headers=headers, data=data, files=files)


def wait_done(site: LiveSite, token: str, submission_id: int, timeout_s: float = 180) -> dict:
    """Poll the submission until it leaves the pending states; its API body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = requests.get(
            f"{site.url}/api/v1/submissions/{submission_id}/",
            headers={"Authorization": f"Token {token}"},
        ).json()
        if body["status"] not in ("queued", "validating", "running", "scoring"):
            return body
        time.sleep(0.5)
    raise TimeoutError(f"submission {submission_id} still {body['status']}")


class RedisServer:
    """A redis-server on a fixed free port that a test can ``kill()`` (SIGKILL: what it held in
    memory is lost, no persistence) and ``start()`` again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(ping, "redis-server")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class PostgresServer:
    """A throw-away PostgreSQL cluster (see ``postgres_server``) that a test can ``stop()``
    (fast shutdown: every connection is cut) and ``start()`` again."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="medquant-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://medquant@:{self.port}/medquant?host={self.root}"

    def _run(self, *cmd: str) -> None:
        subprocess.run(self.as_user + list(cmd), check=True, capture_output=True)

    def create(self) -> None:
        self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", "medquant",
                  "--auth=trust", "-E", "UTF8")  # fmt: skip
        self.start()
        self._run(_postgres_bin("createdb"), "-h", str(self.root), "-p", str(self.port), "-U",
                  "medquant", "medquant")  # fmt: skip

    def start(self) -> None:
        options = f"-k {self.root} -p {self.port} -c listen_addresses='' -c fsync=off"
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "start",
                  "-l", str(self.root / "log"))  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
