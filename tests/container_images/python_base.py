"""Minimal Python base images built offline from this machine's own files: Python + PyTorch (the
example quantizer, the helper) and Python alone (the scripted quantizers: far smaller to save,
upload and load).

No registry is reachable here, so the image is ``docker import``-ed from a root filesystem tarball
assembled from the host: the running interpreter and its standard library (``/opt/python``), the
installed distributions the example quantizer needs and their requirement closure
(``/opt/python/lib/python3.11/site-packages``), the shared libraries they link (found with ``ldd``),
``/etc/passwd`` with the ``quantizer`` user (uid 1000) and the ``/input`` ``/output`` ``/tmp``
mount points. The tag carries a hash of every file's path, size and mtime, so the image is built
once and reused by later test runs until the venv changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as metadata
import io
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
from packaging.requirements import Requirement

REPOSITORY = "medquant-test/python-base"
STDLIB_REPOSITORY = "medquant-test/python-stdlib"
PREFIX = "/opt/python"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
DISTRIBUTIONS = (
    *("torch", "monai", "nibabel", "safetensors", "numpy", "scipy", "einops", "tqdm"),
    *("onnx", "onnxscript", "onnxruntime", "dynamic-network-architectures"),
)
_STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
_STDLIB_SKIP_PREFIX = ("config-",)
_DIST_SKIP = ("torch/include/", "torch/test/", "torch/share/", "caffe2/")
_PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nquantizer:x:1000:1000::/tmp:/sbin/nologin\n"
_GROUP = "root:x:0:\nquantizer:x:1000:\n"
_CHANGES = [
    f"ENV PATH={PREFIX}/bin:/usr/bin:/bin",
    "ENV HOME=/tmp",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "USER 1000:1000",
    "WORKDIR /tmp",
]


def python_base_image(client: docker.DockerClient, *, packages: bool = True) -> str:
    """Tag of the base image for this venv (with ``DISTRIBUTIONS`` or, ``packages=False``, the
    interpreter and standard library only), imported first if the engine lacks it."""
    files = dict(_host_files(DISTRIBUTIONS if packages else ()))
    repository = REPOSITORY if packages else STDLIB_REPOSITORY
    tag = f"{repository}:{_content_hash(files)}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        _import(client, files, tag)
        for image in client.images.list(name=repository):
            if tag not in image.tags:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id, force=True)
    return tag


def _host_files(distributions: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    """(path in the image, host path) of the interpreter, stdlib and ``distributions``' files."""
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    yield f"{PREFIX}/bin/{version}", Path(os.path.realpath(sys.executable))
    yield from _tree(base / "lib" / version, f"{PREFIX}/lib/{version}", _stdlib_wanted)
    site = Path(sysconfig.get_paths()["purelib"])
    target = f"{PREFIX}/lib/{version}/site-packages"
    for dist in _closure(distributions):
        for entry in dist.files or ():
            rel = entry.as_posix()
            path = site / entry
            if rel.startswith("..") or rel.startswith(_DIST_SKIP) or not path.is_file():
                continue
            yield f"{target}/{rel}", path


def _stdlib_wanted(rel: Path) -> bool:
    top = rel.parts[0]
    return top not in _STDLIB_SKIP and not top.startswith(_STDLIB_SKIP_PREFIX)


def _tree(root: Path, target: str, wanted) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not path.is_symlink() and wanted(rel):
            yield f"{target}/{rel.as_posix()}", path


def _closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The named distributions and, recursively, their unconditional requirements."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _content_hash(files: dict[str, Path]) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name, path in sorted(files.items()):
        stat = path.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _shared_libraries(files: dict[str, Path]) -> dict[str, Path]:
    """System libraries the binaries and extension modules link, by soname."""
    libpython = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    binaries = [str(p) for p in files.values() if ".so" in p.name or p.name.startswith("python")]
    found = {libpython.name: libpython}
    for start in range(0, len(binaries), 200):
        out = subprocess.run(
            ["ldd", *binaries[start : start + 200]], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            name, arrow, rest = line.strip().partition(" => ")
            target = rest.split(" (")[0]
            if arrow and target.startswith("/") and "site-packages" not in target:
                found.setdefault(name, Path(target))
    loader = Path("/lib64/ld-linux-x86-64.so.2")
    found[loader.name] = loader
    return found


def _import(client: docker.DockerClient, files: dict[str, Path], tag: str) -> None:
    libs = _shared_libraries(files)
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            for name in ("tmp", "input", "output", "usr/bin", "bin", "etc", "lib64"):
                _add_dir(tar, name, 0o1777 if name == "tmp" else 0o755)
            _add_bytes(tar, "etc/passwd", _PASSWD.encode())
            _add_bytes(tar, "etc/group", _GROUP.encode())
            for soname, path in sorted(libs.items()):
                tar.add(os.path.realpath(path), f"{LIBDIR.lstrip('/')}/{soname}", filter=_public)
            _add_link(tar, "lib64/ld-linux-x86-64.so.2", f"{LIBDIR}/ld-linux-x86-64.so.2")
            _add_link(tar, "lib", "usr/lib")
            version = f"python{sys.version_info.major}.{sys.version_info.minor}"
            _add_link(tar, f"{PREFIX.lstrip('/')}/bin/python", version)
            _add_link(tar, f"{PREFIX.lstrip('/')}/bin/python3", version)
            for name, path in sorted(files.items()):
                tar.add(path, name.lstrip("/"), recursive=False, filter=_public)
        client.api.import_image_from_file(
            str(rootfs), repository=tag.split(":")[0], tag=tag.split(":")[1], changes=_CHANGES
        )


def _public(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    tar.addfile(info)
