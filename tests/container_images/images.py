"""Test images derived from the offline Python base: the example quantizer and small scripted
quantizers (honest and hostile), built with ``docker build`` from an in-memory context. Docker's
build cache makes rebuilding an unchanged image instant."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import tarfile
from pathlib import Path

import docker
import docker.errors

from container_images.python_base import python_base_image

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "quantizers"


def build_image(
    client: docker.DockerClient,
    name: str,
    files: dict[str, bytes],
    entrypoint: list[str],
    instructions: tuple[str, ...] = (),
    *,
    packages: bool = True,
) -> str:
    """Image ID of the base (with the Python packages, or the standard library alone) plus
    ``files`` (paths under /opt/medquant) running ``entrypoint``, with extra Dockerfile
    ``instructions`` (``VOLUME /scratch``, say)."""
    base = _base(client, packages)
    dockerfile = "\n".join(
        [
            f"FROM {base}",
            "COPY --chown=0:0 medquant /opt/medquant",
            "ENV PYTHONPATH=/opt/medquant",
            *instructions,
            f"ENTRYPOINT {json.dumps(entrypoint)}",
        ]
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for path, data in sorted(({"Dockerfile": dockerfile} | _prefixed(files)).items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(context.getvalue()).hexdigest()[:16]
    context.seek(0)
    image, _ = client.images.build(
        fileobj=context,
        custom_context=True,
        tag=f"medquant-test/{name}:{digest}",
        rm=True,
        forcerm=True,
        pull=False,
        network_mode="none",
    )
    prune_other_tags(client, f"medquant-test/{name}", image.id)
    return image.id


def prune_other_tags(client: docker.DockerClient, repository: str, keep: str) -> None:
    """Remove stale builds of ``repository`` (older script or venv versions)."""
    for image in client.images.list(name=repository):
        if image.id != keep:
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


@functools.cache
def _base(client: docker.DockerClient, packages: bool) -> str:
    return python_base_image(client, packages=packages)


def _prefixed(files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"medquant/{path}": data for path, data in files.items()}


def example_quantizer_image(client: docker.DockerClient) -> str:
    """containers/example-quantizer/quantize.py with the project's harness and methods."""
    files = {"quantize.py": (REPO / "containers/example-quantizer/quantize.py").read_bytes()}
    for package in ("harness", "reference_methods"):
        for path in sorted((REPO / package).rglob("*.py")):
            files[path.relative_to(REPO).as_posix()] = path.read_bytes()
    files["harness/scoring/result_schema.json"] = (
        REPO / "harness/scoring/result_schema.json"
    ).read_bytes()
    return build_image(client, "example-quantizer", files, ["python", "/opt/medquant/quantize.py"])


def script_image(
    client: docker.DockerClient, script: str, *args: str, instructions: tuple[str, ...] = ()
) -> str:
    """A quantizer that runs ``quantizers/<script>.py`` (standard library only) with ``args`` (and
    extra Dockerfile ``instructions``)."""
    files = {f"{script}.py": (SCRIPTS / f"{script}.py").read_bytes()}
    entrypoint = ["python", f"/opt/medquant/{script}.py", *args]
    return build_image(client, script, files, entrypoint, instructions, packages=False)
