"""Sandboxed quantizer containers: run a participant's image on a track's ``/input`` and collect
the quantized artifact it writes to ``/output`` (protocol: ``containers/README.md``).

The container gets no network, no capabilities, no-new-privileges, a fixed non-root user, a
read-only root filesystem with a small tmpfs ``/tmp``, memory (= memory + swap), CPU and process
limits, a wall-clock timeout and, only on GPU workers, a GPU device request. ``/input`` is a
read-only bind of the folder built by ``harness.containers.protocol`` (calibration volumes, never
test cases or labels). ``/output`` is a tmpfs volume capped just above the output limit, held
mounted by a small helper container so the harness can read it after the quantizer exits. Every
container and volume carries the harness labels and is removed afterwards; ``remove_orphans`` clears
what a killed worker left behind. Whatever the quantizer does comes back as a ``ContainerOutcome``
with a status and a message for the submitter; only a failing engine raises (``docker.errors``), so
that the calling task can retry."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import posixpath
import shutil
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.models.volumes import Volume
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from harness.containers.images import PinnedImage
from harness.containers.protocol import build_container_input
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

LABEL = "org.medquant.harness"
RUN_LABEL = "org.medquant.run"
WORKER_LABEL = "org.medquant.worker"
HELPER_COMMAND = ["python", "-c", "import signal; signal.pause()"]
_OUTPUT_SLACK_BYTES = 1 << 20  # the tmpfs is this much larger, so overflowing writes are seen
_MAX_OUTPUT_ENTRIES = 1000
"""Files and folders ``/output`` may hold: a checkpoint is two files; each entry costs the runner
memory while the tar stream is read, so folders count too."""
_STOP_WAIT_S = 30
_HELPER_ATTEMPTS = 3
logger = logging.getLogger(__name__)
# Removing a volume just after its containers can be refused while their mounts are released.
_VOLUME_REMOVE_ATTEMPTS = 10
_VOLUME_REMOVE_WAIT_S = 0.5

Status = Literal[
    "succeeded",
    "failed",
    "timed_out",
    "out_of_memory",
    "process_limit",
    "output_too_large",
    "invalid_output",
    "no_output",
]


@dataclass(frozen=True)
class ContainerLimits:
    """Resources of one quantizer run; ``timeout_s`` is wall-clock, memory is without swap."""

    timeout_s: float = 3600.0
    memory_bytes: int = 8 << 30
    cpus: float = 4.0
    pids: int = 512
    output_bytes: int = 1 << 30
    tmp_bytes: int = 256 << 20
    log_bytes: int = 256 << 10
    user: str = "1000:1000"

    @classmethod
    def for_track(cls, spec: TrackSpec, **overrides) -> ContainerLimits:
        """Defaults with the track's wall-clock timeout (``overrides`` win)."""
        return cls(**{"timeout_s": spec.quantizer_timeout_s} | overrides)


_HELPER_LIMITS = ContainerLimits(memory_bytes=256 << 20, cpus=0.25, pids=16)


@dataclass(frozen=True)
class ContainerOutcome:
    """What a quantizer run produced: ``status``, the submitter-facing ``error`` (None when it
    succeeded), its size-capped logs and, when it succeeded, the extracted ``output_dir``."""

    image: str
    status: Status
    error: str | None
    exit_code: int | None
    logs: str
    logs_truncated: bool
    output_dir: Path | None
    output_bytes: int
    seconds: float
    peak_pids: int
    peak_memory_bytes: int

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict:
        return asdict(self) | {
            "output_dir": None if self.output_dir is None else str(self.output_dir)
        }

    def result_entry(self, image: PinnedImage) -> dict:
        """The result document's ``submission.container``: pinned image, run time, peak memory."""
        return {
            "image": image.digest,
            "source": image.source,
            "seconds": self.seconds,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


def run_quantizer_container(
    *,
    image: PinnedImage,
    track: LoadedTrack | TrackSpec,
    workdir: str | Path,
    helper_image: str,
    limits: ContainerLimits | None = None,
    gpu: bool = False,
    worker: str = "",
    client: docker.DockerClient | None = None,
    input_dir: str | Path | None = None,
) -> ContainerOutcome:
    """Run ``image`` sandboxed on ``track``'s ``/input``; its ``/output`` lands in ``workdir``.

    ``helper_image`` is a trusted image with ``python`` (the worker's own) that holds the output
    volume; ``worker`` names this worker in the labels ``remove_orphans`` matches;
    ``input_dir`` is a folder ``build_container_input`` made for this track earlier (built in
    ``workdir`` when None).
    """
    loaded = track if isinstance(track, LoadedTrack) else LoadedTrack.open(track)
    limits = limits or ContainerLimits.for_track(loaded.spec)
    client = client or docker.from_env()
    workdir = Path(workdir).resolve()
    if input_dir is None:
        input_dir = build_container_input(loaded, workdir / "input")
    input_dir = Path(input_dir).resolve()
    _make_readable(input_dir)
    run = uuid.uuid4().hex[:12]
    labels = {LABEL: "quantizer", RUN_LABEL: run, WORKER_LABEL: worker}
    created: list[Container] = []
    volume = client.volumes.create(
        name=f"medquant-output-{run}",
        driver="local",
        driver_opts=_output_volume_options(limits),
        labels=labels,
    )
    try:
        output_mount = Mount("/output", volume.name, type="volume", no_copy=True)
        helper = _start_helper(client, helper_image, output_mount, labels, created)
        try:
            sandbox = _sandbox(limits, labels)
            sandbox["tmpfs"] |= _declared_volumes_as_tmpfs(client, image, limits)
            quantizer = client.containers.create(
                image.reference,
                name=f"medquant-quantizer-{run}",
                labels=labels,
                mounts=[Mount("/input", str(input_dir), type="bind", read_only=True), output_mount],
                environment={"HOME": "/tmp", "OMP_NUM_THREADS": str(math.ceil(limits.cpus))},
                device_requests=_device_requests(gpu),
                **sandbox,
            )
            created.append(quantizer)
            watch = _Watch(client, quantizer.id)
            quantizer.start()
        except docker.errors.APIError as error:
            if not error.is_client_error():
                raise
            return _not_started(image, error)
        return _run(image, quantizer, watch, helper, limits, workdir / "output")
    finally:
        _remove(_of_run(client, run, created), volume)


def remove_orphans(client: docker.DockerClient | None = None, *, worker: str = "") -> int:
    """Remove the containers and volumes this worker's runs left behind (call at worker start);
    return how many were removed."""
    client = client or docker.from_env()
    filters = {"label": [LABEL, f"{WORKER_LABEL}={worker}"]}
    containers = client.containers.list(all=True, filters=filters)
    volumes = client.volumes.list(filters=filters)
    _remove(containers, *volumes)
    return len(containers) + len(volumes)


def _start_helper(
    client: docker.DockerClient,
    helper_image: str,
    output_mount: Mount,
    labels: dict[str, str],
    created: list[Container],
) -> Container:
    """Start the container that keeps the output volume mounted (sandboxed like the quantizer);
    a start the engine fails (a transient runtime error) is retried on a fresh container."""
    attempt = 0
    while True:
        attempt += 1
        helper = client.containers.create(
            helper_image,
            HELPER_COMMAND,
            name=f"medquant-output-holder-{labels[RUN_LABEL]}-{attempt}",
            labels=labels,
            mounts=[output_mount],
            **_sandbox(_HELPER_LIMITS, labels),
        )
        created.append(helper)
        try:
            helper.start()
            return helper
        except docker.errors.APIError as error:
            if error.is_client_error() or attempt == _HELPER_ATTEMPTS:
                raise


def _not_started(image: PinnedImage, error: docker.errors.APIError) -> ContainerOutcome:
    """The outcome of an image Docker refuses to start (no command, missing executable, …)."""
    return ContainerOutcome(
        image=image.digest,
        status="failed",
        error=f"the quantizer image could not be started: {error.explanation}",
        exit_code=None,
        logs="",
        logs_truncated=False,
        output_dir=None,
        output_bytes=0,
        seconds=0.0,
        peak_pids=0,
        peak_memory_bytes=0,
    )


def _run(
    image: PinnedImage,
    quantizer: Container,
    watch: _Watch,
    helper: Container,
    limits: ContainerLimits,
    out: Path,
) -> ContainerOutcome:
    """Wait for the started ``quantizer`` (killed at the time limit) and judge what it did."""
    watch.start()
    start = time.monotonic()
    timed_out = False
    try:
        exit_code = quantizer.wait(timeout=limits.timeout_s)["StatusCode"]
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        timed_out = True
        quantizer.kill()
        exit_code = quantizer.wait(timeout=_STOP_WAIT_S)["StatusCode"]
    seconds = time.monotonic() - start
    quantizer.reload()
    oom = bool(quantizer.attrs["State"].get("OOMKilled"))
    logs, truncated = _capped_logs(quantizer, limits.log_bytes)
    extract = exit_code == 0 and not (timed_out or oom)
    output = _collect_output(helper, out if extract else None, limits.output_bytes)
    status, error = _verdict(limits, exit_code, timed_out, oom, watch.peak_pids, output, logs)
    return ContainerOutcome(
        image=image.digest,
        status=status,
        error=error,
        exit_code=None if timed_out else exit_code,
        logs=logs,
        logs_truncated=truncated,
        output_dir=out if status == "succeeded" else None,
        output_bytes=output.size,
        seconds=round(seconds, 3),
        peak_pids=watch.peak_pids,
        peak_memory_bytes=watch.peak_memory,
    )


def _verdict(
    limits: ContainerLimits,
    exit_code: int,
    timed_out: bool,
    oom: bool,
    peak_pids: int,
    output: _Output,
    logs: str,
) -> tuple[Status, str | None]:
    """The status and submitter-facing message, most specific cause first."""
    ended = (
        f"was stopped at the time limit of {limits.timeout_s:g} s"
        if timed_out
        else f"exited with status {exit_code}"
    )
    if oom:
        return "out_of_memory", (
            f"the quantizer was killed for exceeding its memory limit of "
            f"{limits.memory_bytes / 2**20:.0f} MiB"
        )
    if output.size > limits.output_bytes:
        return "output_too_large", (
            f"the quantizer wrote more than the {limits.output_bytes / 2**20:g} MiB allowed in "
            "/output"
        )
    if peak_pids >= limits.pids and (timed_out or exit_code != 0):
        return "process_limit", (
            f"the quantizer reached its limit of {limits.pids} processes (a fork bomb?) and {ended}"
        )
    if timed_out:
        return "timed_out", (
            f"the quantizer did not finish within the time limit of {limits.timeout_s:g} s and "
            "was stopped"
        )
    if exit_code != 0:
        last = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
        return "failed", f"the quantizer exited with status {exit_code}" + (
            f": {last.strip()[:300]}" if last else " (no output on stdout/stderr)"
        )
    if output.problem:
        return "invalid_output", f"the quantizer's /output was rejected: {output.problem}"
    if not output.files:
        return "no_output", "the quantizer exited successfully but wrote nothing to /output"
    return "succeeded", None


@dataclass
class _Output:
    """Total bytes, regular files and the first problem found in ``/output``."""

    size: int = 0
    files: list[str] = field(default_factory=list)
    entries: int = 0
    problem: str | None = None


def _collect_output(helper: Container, dest: Path | None, limit: int) -> _Output:
    """Read ``/output`` from the helper as a tar stream: its total size (stopping once over the
    limit) and, into ``dest``, its regular files; links and special files are refused, and so is
    more than ``_MAX_OUTPUT_ENTRIES`` files and folders."""
    chunks, _ = helper.get_archive("/output")
    output = _Output()
    with tarfile.open(fileobj=io.BufferedReader(_ChunkStream(chunks), 1 << 20), mode="r|") as tar:
        for member in tar:
            output.size += member.size
            if output.size > limit:
                return output
            top, _, rel = posixpath.normpath(member.name).partition("/")
            if not rel:
                continue
            output.entries += 1
            if output.entries > _MAX_OUTPUT_ENTRIES:
                output.problem = f"it holds more than {_MAX_OUTPUT_ENTRIES} files and folders"
                return output
            if member.isdir():
                continue
            if top != "output" or rel.startswith(("/", "../")):
                output.problem = f"{member.name!r} lies outside /output"
            elif not member.isfile():
                output.problem = f"{rel!r} is not a regular file or folder"
            if output.problem:
                return output
            output.files.append(rel)
            if dest is not None:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as fh:
                    shutil.copyfileobj(tar.extractfile(member), fh)
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
    return output


def _sandbox(limits: ContainerLimits, labels: dict[str, str]) -> dict:
    """Docker create() arguments shared by the quantizer and the helper."""
    return {
        "user": limits.user,
        "network_mode": "none",
        "network_disabled": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_bytes}"},
        "mem_limit": limits.memory_bytes,
        "memswap_limit": limits.memory_bytes,
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": limits.pids,
        "ipc_mode": "private",
        "shm_size": 64 << 20,
        "ulimits": [Ulimit(name="nofile", soft=4096, hard=4096)],
        "init": True,
        "log_config": LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": str(max(4 * limits.log_bytes, 1 << 20)), "max-file": "2"},
        ),
    }


SANDBOX_PATHS = ("/input", "/output", "/tmp")
"""Paths the sandbox mounts itself: an image's VOLUME there is covered by that mount."""


def _declared_volumes_as_tmpfs(
    client: docker.DockerClient, image: PinnedImage, limits: ContainerLimits
) -> dict[str, str]:
    """A size-capped tmpfs (``limits.tmp_bytes``, counted in the container's memory) over each
    ``VOLUME`` the image declares: Docker would otherwise give each an anonymous volume on the
    host's disk, writable past the read-only root and every other limit."""
    declared = client.images.get(image.reference).attrs.get("Config", {}).get("Volumes") or {}
    return {
        path: f"rw,nosuid,nodev,size={limits.tmp_bytes}"
        for path in declared
        if path.rstrip("/") not in SANDBOX_PATHS
    }


def _device_requests(gpu: bool) -> list[DeviceRequest] | None:
    """All GPUs on a GPU worker; none anywhere else."""
    return [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else None


def _output_volume_options(limits: ContainerLimits) -> dict[str, str]:
    uid, _, gid = limits.user.partition(":")
    size = limits.output_bytes + _OUTPUT_SLACK_BYTES
    return {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": f"size={size},uid={uid},gid={gid or uid},mode=0700,nosuid,nodev,noexec",
    }


def _capped_logs(container: Container, limit: int) -> tuple[str, bool]:
    """stdout + stderr, keeping the last ``limit`` bytes."""
    data = container.logs(stdout=True, stderr=True)
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    dropped = len(data) - limit
    tail = data[-limit:].decode("utf-8", "replace")
    return f"[… {dropped} earlier bytes of log omitted …]\n{tail}", True


def _make_readable(root: Path) -> None:
    """Let the container's non-root user read ``/input`` (files a+r, folders a+rx)."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        extra = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
        if path.is_dir():
            extra |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        os.chmod(path, mode | extra)


def _of_run(client: docker.DockerClient, run: str, created: list[Container]) -> list[Container]:
    """The containers of ``run``: those created here and any the engine made for a call that
    did not return (a create that timed out on a loaded engine still creates the container)."""
    found = {c.id: c for c in created}
    with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
        for container in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run}"}):
            found.setdefault(container.id, container)
    return list(found.values())


def _remove(containers: list[Container], *volumes: Volume) -> None:
    """Force-remove containers (with anonymous volumes), then the volumes. A volume is removed
    without ``force`` (which lets the engine drop an error) and retried while the engine still
    refuses (a removed container's mount being released); one it never lets go is logged and
    left to ``remove_orphans`` at the next worker start, rather than failing the evaluation."""
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
    for volume in volumes:
        for attempt in range(1, _VOLUME_REMOVE_ATTEMPTS + 1):
            try:
                volume.remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as error:
                if attempt == _VOLUME_REMOVE_ATTEMPTS:
                    logger.warning("volume %s not removed: %s", volume.name, error)
                    break
                time.sleep(_VOLUME_REMOVE_WAIT_S)


class _Watch(threading.Thread):
    """Peak process count and memory of a running container, from Docker's stats stream (one
    sample a second; read without joining: the stream ends when the container is removed)."""

    def __init__(self, client: docker.DockerClient, container_id: str) -> None:
        super().__init__(daemon=True)
        self.client, self.container_id = client, container_id
        self.peak_pids = 0
        self.peak_memory = 0

    def run(self) -> None:
        try:
            for sample in self.client.api.stats(self.container_id, stream=True, decode=True):
                memory = sample.get("memory_stats") or {}
                self.peak_pids = max(
                    self.peak_pids, (sample.get("pids_stats") or {}).get("current", 0)
                )
                self.peak_memory = max(
                    self.peak_memory, memory.get("max_usage", 0), memory.get("usage", 0)
                )
        except (docker.errors.APIError, requests.exceptions.RequestException, ValueError):
            return


class _ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (Docker's archive stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.pending = iter(chunks), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.pending = memoryview(chunk)
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count
