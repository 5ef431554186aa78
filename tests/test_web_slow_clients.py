"""The production web command (``gunicorn -c python:leaderboard.gunicorn_conf``, the site image's
CMD): slow clients hold a thread each, not a worker, so four of them trickling their headers do
not stop a fifth client from getting a page at once; each worker runs under its memory limit."""

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from leaderboard_services import ROOT, free_port, site_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.services]
SLOW_CLIENTS = 4
FAST_PAGE_S = 1.0
"""The issue's bound for the fifth client's page."""


def _gunicorn(env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "gunicorn"), "-c",
               "python:leaderboard.gunicorn_conf", "leaderboard.wsgi"]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_slow_clients_do_not_stop_a_fast_one(tmp_path):
    port = free_port()
    (tmp_path / "var").mkdir()
    env = site_env(tmp_path / "var") | {"MEDQUANT_WEB_BIND": f"127.0.0.1:{port}"}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    web = _gunicorn(env, tmp_path / "web.log")
    url = f"http://127.0.0.1:{port}/"
    slow: list[socket.socket] = []
    try:
        wait_for(lambda: requests.get(url, timeout=5).ok, "gunicorn", 120)
        workers = [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(web.pid)], capture_output=True, text=True
        ).stdout.split()]  # fmt: skip
        assert len(workers) == 4
        with ThreadPoolExecutor(8) as pool:  # every worker warm (its first request imports views)
            assert all(pool.map(lambda _: requests.get(url, timeout=60).ok, range(32)))
        for pid in workers:  # each worker under the configured address-space limit
            limits = Path(f"/proc/{pid}/limits").read_text()
            assert re.search(r"Max address space\s+4294967296\s", limits), limits
        for _ in range(SLOW_CLIENTS):  # slowloris: a request line, then a header byte now and then
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(client)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the slow clients keep trickling meanwhile
            for client in slow:
                client.sendall(b"a")
            start = time.monotonic()
            response = requests.get(url, timeout=30)
            seconds = time.monotonic() - start
            assert response.status_code == 200
            assert seconds < FAST_PAGE_S, f"a page took {seconds:.2f} s beside slow clients"
            time.sleep(1)
        print(f"home page in {seconds:.3f} s beside {SLOW_CLIENTS} slow clients "
              f"(load {os.getloadavg()[0]:.2f})")  # fmt: skip
    finally:
        for client in slow:
            client.close()
        web.terminate()
        web.wait(timeout=60)
