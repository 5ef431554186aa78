"""A reachable Docker engine for the tests: the configured one, or ``dockerd`` started here.

Debian's ``docker.io`` provides ``dockerd``; ``.ci/run`` installs it. When no engine answers and
we are root, ``dockerd`` is started in the background and stopped again by ``stop``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

START_TIMEOUT_S = 60.0


@dataclass
class Engine:
    """A Docker client and the ``dockerd`` process we started for it (None: already running)."""

    client: docker.DockerClient
    process: subprocess.Popen | None

    def stop(self) -> None:
        self.client.close()
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _ping() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None


def start_engine() -> Engine | str:
    """A running engine, or the reason why none can be had."""
    client = _ping()
    if client is not None:
        return Engine(client, None)
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")
    if dockerd is None:
        return "no Docker engine is reachable and dockerd is not installed (apt install docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine is reachable and starting dockerd needs root"
    log = Path(tempfile.mkdtemp(prefix="dockerd-")) / "dockerd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [dockerd, "--host", "unix:///var/run/docker.sock"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"dockerd exited with status {process.returncode}; see {log}"
        client = _ping()
        if client is not None:
            return Engine(client, process)
        time.sleep(0.5)
    process.terminate()
    return f"dockerd did not answer within {START_TIMEOUT_S:g} s; see {log}"
