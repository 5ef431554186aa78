"""Hostile and broken inputs against the live site (gunicorn + a real Celery worker on the
embedded stack), each answered with its specific reason: an upload the site can judge gets HTTP
400 with the API's error body; one only the worker can judge ends ``rejected`` (never
``failed``: the submitter is at fault); the harness's own refusals (ONNX graphs, quantizer image
archives, a container's ``/output``) raise their ``SubmissionError`` subclass, which the pipeline
turns into ``rejected``. Afterwards the site and the worker still evaluate a valid submission,
and the web workers' peak RSS stayed within ``WEB_PEAK_RSS_LIMIT``."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import tarfile
import tracemalloc
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
import requests
import torch
from leaderboard_fixtures import tiny_checkpoints, zip_bytes
from leaderboard_services import (
    TINY_TRACK,
    live_site,
    sign_up_and_create_token,
    submit,
    wait_done,
)
from onnx import TensorProto, helper
from safetensors.torch import save_file

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME, read_checkpoint
from harness.artifacts.onnx.verify import (
    OnnxInterface,
    OnnxVerificationError,
    PrecisionLimits,
    verify_onnx,
)
from harness.containers.images import (
    MANIFEST,
    MAX_ARCHIVE_MEMBERS,
    ImageError,
    check_image_upload,
    load_image_archive,
)
from harness.containers.sandbox import _collect_output
from harness.errors import SubmissionError

__all__ = ["tiny_checkpoints"]
pytestmark = [pytest.mark.slow, pytest.mark.services]
QUOTA = 100  # rejected entries count against the quota; every hostile one must get through
SUBMIT_RATE_PER_HOUR = 1000
WEB_PEAK_RSS_LIMIT = 600 * 2**20
GOOD_WEIGHTS = b"\x02\x00\x00\x00\x00\x00\x00\x00{}"
GOOD_MANIFEST = b'{"layers": {}}'
RESULTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "hostile"


@pytest.fixture(scope="module")
def live(tiny_track, tmp_path_factory):
    var = tmp_path_factory.mktemp("hostile_var")
    with pytest.MonkeyPatch.context() as patch:
        # every hostile upload is a submission request: more than the default 30 per hour from
        # one user, which would throttle the valid submission that closes the suite
        patch.setenv("MEDQUANT_RATE_SUBMIT", f"{SUBMIT_RATE_PER_HOUR}/hour")
        with live_site(*tiny_track, var, "sqla+sqlite", QUOTA, web_threads=8) as site:
            _, site.token = sign_up_and_create_token(site, "mallory")
            yield site


# ---- zip surgery ---------------------------------------------------------------------------


def _patch(data: bytes, member: str, local: dict[int, bytes], central: dict[int, bytes]) -> bytes:
    """Overwrite fields of ``member``'s local header and central-directory entry at the given
    offsets (APPNOTE 4.3.7 / 4.3.12)."""
    out = bytearray(data)
    name = member.encode()
    for signature, fields in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        name_at = {b"PK\x03\x04": 30, b"PK\x01\x02": 46}[signature]
        position = out.find(signature)
        while (
            position >= 0
            and bytes(out[position + name_at : position + name_at + len(name)]) != name
        ):
            position = out.find(signature, position + 1)
        assert position >= 0, member
        for offset, value in fields.items():
            out[position + offset : position + offset + len(value)] = value
    return bytes(out)


def _deflated(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _good_pair_zip() -> bytes:
    return _deflated({MANIFEST_NAME: GOOD_MANIFEST * 50, WEIGHTS_NAME: GOOD_WEIGHTS})


def bad_crc() -> bytes:
    return _patch(_good_pair_zip(), MANIFEST_NAME, {14: b"\0\0\0\0"}, {16: b"\0\0\0\0"})


def lying_size() -> bytes:
    return _patch(_good_pair_zip(), MANIFEST_NAME, {22: struct.pack("<I", 3)},
                  {24: struct.pack("<I", 3)})  # fmt: skip


def encrypted() -> bytes:
    return _patch(_good_pair_zip(), MANIFEST_NAME, {6: b"\x01\x00"}, {8: b"\x01\x00"})


def deflate64() -> bytes:
    return _patch(_good_pair_zip(), MANIFEST_NAME, {8: b"\x09\x00"}, {10: b"\x09\x00"})


def broken_deflate() -> bytes:
    data = bytearray(_good_pair_zip())
    start = data.find(b"PK\x03\x04") + 30 + len(MANIFEST_NAME)
    data[start] = 0xFF  # block type 3: invalid
    return bytes(data)


def truncated_zip() -> bytes:
    data = _good_pair_zip()
    return data[: len(data) - 30]


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo(MANIFEST_NAME)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr(WEIGHTS_NAME, GOOD_WEIGHTS)
    return buffer.getvalue()


def manifest_zip(manifest: bytes, weights: bytes = GOOD_WEIGHTS) -> bytes:
    return _deflated({MANIFEST_NAME: manifest, WEIGHTS_NAME: weights})


DEEP_JSON = b"[" * 200_000 + b"]" * 200_000
HUGE_INTEGER = b'{"layers": {}, "x": ' + b"9" * 100_000 + b"}"
FLOAT_BOMB = b'{"layers": {}, "x": [' + b"0.0," * 10_000_000 + b"0.0]}"  # 40 MB, ~40 KB zipped


def safetensors_with_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


UPLOADS = {
    # id: (zip bytes, expected message fragment)
    "bad CRC": (bad_crc, "corrupt or truncated"),
    "lying size": (lying_size, "corrupt or truncated"),
    "encrypted member": (encrypted, "is encrypted"),
    "Deflate64 member": (deflate64, "compression method 9"),
    "broken deflate stream": (broken_deflate, "corrupt or truncated"),
    "truncated zip": (truncated_zip, "not a zip file"),
    "not a zip": (lambda: b"MZ\x90\x00 definitely not a zip" * 10, "not a zip file"),
    "empty upload": (lambda: b"", "empty"),
    "parent traversal": (
        lambda: zip_bytes({"../manifest.json": GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS}),
        "unsafe path",
    ),
    "absolute path": (
        lambda: zip_bytes({"/abs/manifest.json": GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS}),
        "unsafe path",
    ),
    "drive letter path": (
        lambda: zip_bytes({"C:\\manifest.json": GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS}),
        "unsafe path",
    ),
    "symlink member": (symlink_zip, "symbolic link"),
    "extra file": (
        lambda: zip_bytes(
            {MANIFEST_NAME: GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS, "run.py": b"import os"}
        ),
        "unexpected file",
    ),
    "missing weights": (lambda: zip_bytes({MANIFEST_NAME: GOOD_MANIFEST}), "missing"),
    "two manifests": (
        lambda: zip_bytes(
            {
                "a/" + MANIFEST_NAME: GOOD_MANIFEST,
                "b/" + MANIFEST_NAME: GOOD_MANIFEST,
                WEIGHTS_NAME: GOOD_WEIGHTS,
            }  # fmt: skip
        ),
        "more than one manifest.json",
    ),
    "split folders": (
        lambda: zip_bytes({MANIFEST_NAME: GOOD_MANIFEST, "a/" + WEIGHTS_NAME: GOOD_WEIGHTS}),
        "same folder",
    ),
    "manifest not JSON": (lambda: manifest_zip(b"{not json"), "not valid JSON"),
    "manifest 200k deep": (lambda: manifest_zip(DEEP_JSON), "nests 200000 levels deep"),
    "manifest 100,000-digit integer": (
        lambda: manifest_zip(HUGE_INTEGER),
        "number of 100000 characters",
    ),
    "manifest inflating to 40 MB": (lambda: manifest_zip(FLOAT_BOMB), "the limit is 4 MiB"),
    "manifest with NaN": (lambda: manifest_zip(b'{"layers": {}, "x": NaN}'), "NaN"),
    "manifest a list": (lambda: manifest_zip(b"[1, 2]"), "must be a JSON object"),
    "safetensors header length absurd": (
        lambda: manifest_zip(GOOD_MANIFEST, struct.pack("<Q", 2**63) + b"{}"),
        "bad header length",
    ),
    "safetensors too short": (lambda: manifest_zip(GOOD_MANIFEST, b"\x02\x00"), "too short"),
    "safetensors header not JSON": (
        lambda: manifest_zip(GOOD_MANIFEST, safetensors_with_header(b"{oops")),
        "not valid JSON",
    ),
    "safetensors header 100k deep": (
        lambda: manifest_zip(GOOD_MANIFEST, safetensors_with_header(b"[" * 10**5 + b"]" * 10**5)),
        "nests 100000 levels deep",
    ),
    "safetensors header a list": (
        lambda: manifest_zip(GOOD_MANIFEST, safetensors_with_header(b"[]")),
        "header is not an object",
    ),
}


def post(live, data: dict, files: dict) -> requests.Response:
    return requests.post(
        f"{live.url}/api/v1/submissions/",
        headers={"Authorization": f"Token {live.token}"},
        data={"track": TINY_TRACK, "kind": "checkpoint", "method": "hostile"} | data,
        files=files,
        timeout=120,
    )


def assert_refused(response: requests.Response, fragment: str) -> None:
    assert response.status_code == 400, response.text[:500]
    error = response.json()["error"]
    assert error["status"] == 400 and error["code"] == "invalid"
    assert fragment in error["message"], error["message"]


def my_submissions(live) -> list[dict]:
    body = requests.get(
        f"{live.url}/api/v1/submissions/", headers={"Authorization": f"Token {live.token}"}
    ).json()
    return body["results"]


@pytest.mark.parametrize("name", list(UPLOADS))
def test_a_hostile_checkpoint_zip_is_refused_with_its_reason(live, name):
    make, fragment = UPLOADS[name]
    response = post(live, {}, {"artifact": ("ckpt.zip", make())})
    assert_refused(response, fragment)


PAIRS = {
    "pair: manifest 200k deep": (DEEP_JSON, GOOD_WEIGHTS, "nests 200000 levels deep"),
    "pair: manifest over 4 MiB": (b" " * (5 * 2**20) + GOOD_MANIFEST, GOOD_WEIGHTS, "4 MiB"),
    "pair: weights not safetensors": (GOOD_MANIFEST, b"\xff" * 4, "too short"),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_a_hostile_manifest_and_weights_pair_is_refused_with_its_reason(live, name):
    manifest, weights, fragment = PAIRS[name]
    files = {"manifest": (MANIFEST_NAME, manifest), "weights": (WEIGHTS_NAME, weights)}
    assert_refused(post(live, {}, files), fragment)


def test_a_zip_and_a_pair_together_are_refused(live):
    files = {"artifact": ("c.zip", _good_pair_zip()), "manifest": (MANIFEST_NAME, GOOD_MANIFEST),
             "weights": (WEIGHTS_NAME, GOOD_WEIGHTS)}  # fmt: skip
    assert_refused(post(live, {}, files), "either one zip or")


def test_a_container_is_refused_where_the_site_runs_none_with_how_to_enable_it(live):
    response = post(live, {"kind": "container"}, {"artifact": ("q.tar", b"\0" * 1024)})
    assert_refused(response, "MEDQUANT_CONTAINERS=1")


def test_an_onnx_file_is_refused_on_a_checkpoint_track(live):
    response = post(live, {"kind": "onnx"}, {"artifact": ("m.onnx", b"\x08\x07")})
    assert_refused(response, "this track accepts")


# ---- rejected by the worker --------------------------------------------------------------


def _first_layer(ckpt: Path) -> str:
    return next(iter(json.loads((ckpt / MANIFEST_NAME).read_text())["layers"]))


def _version_1(ckpt: Path) -> tuple[dict, dict]:
    """The checkpoint's manifest and tensors in the version-1 layout (every tensor as the model
    holds it, no packing), which the loader still reads: hostile tensors are written in it."""
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text()) | {"version": 1}
    return manifest, dict(read_checkpoint(ckpt).tensors)


def _with_tensors(ckpt: Path, change) -> bytes:
    manifest, tensors = _version_1(ckpt)
    change(tensors, _first_layer(ckpt))
    return _zipped(manifest, tensors)


def _zipped(manifest: dict, tensors: dict) -> bytes:
    buffer = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-{os.getpid()}.safetensors"
    save_file(tensors, buffer)
    data = buffer.read_bytes()
    buffer.unlink()
    return zip_bytes({MANIFEST_NAME: json.dumps(manifest).encode(), WEIGHTS_NAME: data})


def _set(buffer: str, make):
    def change(tensors, layer):
        key = f"{layer}.{buffer}"
        tensors[key] = make(tensors[key])

    return change


def _with_manifest(ckpt: Path, change) -> bytes:
    manifest, tensors = _version_1(ckpt)
    change(manifest, _first_layer(ckpt))
    return _zipped(manifest, tensors)


def _drop_tensor(tensors, layer):
    del tensors[f"{layer}.bias"]


def _rename_layer(manifest, layer):
    manifest["layers"]["no.such.layer"] = manifest["layers"].pop(layer)


WORKER = {
    "uint64 codes": (_set("weight_codes", lambda t: t.abs().to(torch.uint64)), "dtype uint64"),
    "uint32 codes": (_set("weight_codes", lambda t: t.abs().to(torch.uint32)), "dtype uint32"),
    "float8 scales": (
        _set("weight_scale", lambda t: t.to(torch.float8_e4m3fn)),
        "dtype float8_e4m3fn",
    ),
    "codes needing 65 bits": (
        _set("weight_codes", lambda t: torch.full_like(t, -(2**63), dtype=torch.int64)),
        "65 bits",
    ),
    "codes needing 11 bits": (
        _set("weight_codes", lambda t: torch.full_like(t, 1023, dtype=torch.int32)),
        "11 bits",
    ),
    "NaN scales": (_set("weight_scale", lambda t: torch.full_like(t, float("nan"))), "non-finite"),
    "negative scales": (_set("weight_scale", lambda t: -t), "non-positive"),
    "missing tensor": (_drop_tensor, "missing tensors"),
    "codes of the wrong shape": (_set("weight_codes", lambda t: t[:1]), "has shape"),
}
MANIFESTS = {
    "unknown format": (lambda m, _: m.update(format="pickle"), "unknown checkpoint format"),
    "layer not in the architecture": (_rename_layer, "does not exist in the reference"),
    "declared 9-bit weights": (
        lambda m, layer: m["layers"][layer].update(weight_bits=9),
        "weight_bits must be an integer from 2 to 8",
    ),
}


def _evaluated(live, data: bytes, name: str) -> dict:
    response = post(live, {"method": name}, {"artifact": ("ckpt.zip", data)})
    assert response.status_code == 201, response.text[:500]
    return wait_done(live, live.token, response.json()["id"], timeout_s=240)


@pytest.mark.parametrize("name", list(WORKER) + list(MANIFESTS))
def test_a_checkpoint_only_the_worker_can_judge_ends_rejected_with_its_reason(
    live, tiny_checkpoints, name
):
    ckpt = tiny_checkpoints["w8a8"]
    if name in WORKER:
        change, fragment = WORKER[name]
        data = _with_tensors(ckpt, change)
    else:
        change, fragment = MANIFESTS[name]
        data = _with_manifest(ckpt, change)
    final = _evaluated(live, data, name)
    assert final["status"] == "rejected", final
    assert fragment in final["error"], final["error"]
    assert final["mean_dsc"] is None


def test_truncated_safetensors_data_is_refused_at_upload(live, tiny_checkpoints):
    ckpt = tiny_checkpoints["w8a8"]
    weights = (ckpt / WEIGHTS_NAME).read_bytes()
    data = zip_bytes({MANIFEST_NAME: (ckpt / MANIFEST_NAME).read_bytes(),
                      WEIGHTS_NAME: weights[: len(weights) - 64]})  # fmt: skip
    response = post(live, {"method": "truncated"}, {"artifact": ("ckpt.zip", data)})
    assert response.status_code == 400, response.text[:500]
    assert "weights.safetensors is truncated or corrupt" in response.text


# ---- refused by the harness's verifiers ---------------------------------------------------

INTERFACE = OnnxInterface("image", (1, 8, 8, 8), "logits", (2, 8, 8, 8))
LIMITS = PrecisionLimits(weight_bits=8, activation_bits=8)


def _onnx_file(tmp_path: Path, nodes, initializers=()) -> Path:
    graph = helper.make_graph(
        nodes, "hostile",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, 8, 8, 8])],
        initializer=list(initializers),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_that_expands_its_logits_4096_times_is_refused_before_it_runs(tmp_path):
    shape = np.array([1, 2, 4096, 8, 8, 8], dtype=np.int64)
    axes = np.array([2], dtype=np.int64)
    nodes = [
        helper.make_node("Concat", ["image", "image"], ["two"], axis=1),
        helper.make_node("Unsqueeze", ["two", "axes"], ["wide"]),
        helper.make_node("Expand", ["wide", "shape"], ["huge"]),
        helper.make_node("ReduceMean", ["huge", "axes"], ["logits"], keepdims=0),
    ]
    initializers = [onnx.numpy_helper.from_array(shape, "shape"),
                    onnx.numpy_helper.from_array(axes, "axes")]  # fmt: skip
    path = _onnx_file(tmp_path, nodes, initializers)
    with pytest.raises(OnnxVerificationError, match=r"tensor 'huge' would hold 4194304 elements"):
        verify_onnx(path, INTERFACE, LIMITS)


def _identity_chain(length: int) -> list:
    names = ["image", *(f"t{i}" for i in range(length - 1))]
    nodes = [helper.make_node("Identity", [a], [b]) for a, b in zip(names, names[1:], strict=False)]
    return [*nodes, helper.make_node("Concat", [names[-1], names[-1]], ["logits"], axis=1)]


def test_onnx_of_300k_identity_nodes_is_refused_by_its_node_count(tmp_path):
    path = _onnx_file(tmp_path, _identity_chain(300_000))
    with pytest.raises(OnnxVerificationError, match="has 300000 nodes; the limit is 50000"):
        verify_onnx(path, INTERFACE, LIMITS)


def test_onnx_deeper_than_the_depth_limit_is_refused(tmp_path):
    path = _onnx_file(tmp_path, _identity_chain(10_005))
    with pytest.raises(OnnxVerificationError, match="more than 10000 nodes deep"):
        verify_onnx(path, INTERFACE, LIMITS)


def _image_archive(path: Path, manifest: bytes, extra: dict[str, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in {"manifest.json": manifest, **extra}.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


IMAGES = {
    "image manifest 100k deep": (b"[" * 10**5 + b"]" * 10**5, {}, "nests 100000 levels deep"),
    "image manifest huge integer": (b"[" + b"7" * 10**5 + b"]", {}, "number of 100000"),
    "image Config is a directory": (
        json.dumps([{"Config": "cfg", "Layers": ["layer.tar"]}]).encode(),
        {"cfg": None, "layer.tar": b"x"},
        "which is not a file",
    ),
    "image archive truncated": (None, {}, "not a readable tar file"),
    "image of 200 layers": (
        json.dumps([{"Config": "cfg", "Layers": [f"l{i}/layer.tar" for i in range(200)]}]).encode(),
        {"cfg": b"{}"},
        "the image has 200 layers; Docker loads at most 125",
    ),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_hostile_image_archive_is_an_image_error(tmp_path, name):
    manifest, extra, fragment = IMAGES[name]
    archive = tmp_path / "image.tar"
    if manifest is None:
        _image_archive(archive, b"[]", {"layer.tar": b"x" * 4096})
        archive.write_bytes(archive.read_bytes()[:300])
    else:
        _image_archive(archive, manifest, extra)
    # the archive is judged before Docker sees it: no engine is needed to refuse it
    with pytest.raises(ImageError, match=fragment):
        load_image_archive(None, archive, max_bytes=2**30, workdir=tmp_path)


ARCHIVE_ENTRIES = 100_000
"""Entries of the many-entry archive (51 MB of tar headers)."""
ARCHIVE_READ_PEAK_LIMIT = 16 * 2**20
"""Python memory reading it may take: the headers up to the cap (~1 KB each), not all of them."""


def test_an_image_archive_of_100k_entries_is_refused_by_its_count_in_bounded_memory(tmp_path):
    archive = tmp_path / "image.tar"
    manifest = json.dumps([{"Config": "cfg", "Layers": ["layer.tar"]}]).encode()
    with archive.open("wb") as out:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        out.write(info.tobuf() + manifest.ljust(512, b"\0"))
        for i in range(ARCHIVE_ENTRIES):  # headers only, written directly: folders d0, d1, ...
            folder = tarfile.TarInfo(f"d{i}")
            folder.type = tarfile.DIRTYPE
            out.write(folder.tobuf())
        out.write(b"\0" * 1024)
    for judge in (
        lambda: check_image_upload(archive.open("rb"), archive.stat().st_size, 2**30),
        lambda: load_image_archive(None, archive, max_bytes=2**30, workdir=tmp_path),
    ):
        tracemalloc.start()
        try:
            with pytest.raises(ImageError, match=f"more than {MAX_ARCHIVE_MEMBERS} entries"):
                judge()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < ARCHIVE_READ_PEAK_LIMIT, peak


class _Helper:
    """Stands in for the helper container: ``get_archive`` streams a prepared tar."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_archive(self, path: str):
        return iter([self.data[i : i + 65536] for i in range(0, len(self.data), 65536)]), {}


def test_folders_count_toward_the_output_entry_limit(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ["output", *(f"output/d{i}" for i in range(2000))]:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    output = _collect_output(_Helper(buffer.getvalue()), tmp_path / "out", 2**30)
    assert output.problem == "it holds more than 1000 files and folders"
    assert not (tmp_path / "out").exists()


def test_every_verifier_refusal_is_a_submission_error():
    assert issubclass(OnnxVerificationError, SubmissionError)
    assert issubclass(ImageError, SubmissionError)


# ---- and everything still works ------------------------------------------------------------

RACE_QUOTA = 5


def _set_quota(live, quota: int) -> None:
    live.manage("shell", "-c", "from leaderboard.tracks.models import Track; "
                f"Track.objects.update(daily_quota={quota})")  # fmt: skip


def test_twenty_parallel_submissions_on_the_embedded_stack_take_exactly_the_quota(
    live, tiny_checkpoints
):
    """SQLite (WAL, busy timeout, IMMEDIATE transactions) under 20 concurrent writers: exactly
    the quota accepted, the rest refused with the reason, no 'database is locked' 500."""
    _, token = sign_up_and_create_token(live, "racer")
    _set_quota(live, RACE_QUOTA)
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(
                pool.map(
                    lambda i: submit(live, token, tiny_checkpoints["w8a8"], f"race {i}"),
                    range(20),
                )
            )
    finally:
        _set_quota(live, QUOTA)
    codes = [r.status_code for r in responses]
    assert codes.count(201) == RACE_QUOTA and codes.count(400) == 20 - RACE_QUOTA, codes
    refused = [r.json()["error"]["message"] for r in responses if r.status_code == 400]
    assert all(m.startswith(f"track: daily quota reached: {RACE_QUOTA} of") for m in refused)
    for response in responses:
        if response.status_code == 201:
            assert wait_done(live, token, response.json()["id"])["status"] == "done"


def test_the_site_and_worker_still_evaluate_a_valid_submission_within_the_memory_budget(
    live, tiny_checkpoints
):
    created = submit(live, live.token, tiny_checkpoints["w8a8"], "valid after the storm")
    assert created.status_code == 201, created.text
    assert wait_done(live, live.token, created.json()["id"])["status"] == "done"
    statuses = [s["status"] for s in my_submissions(live)]
    # only the worker-judged inputs and the valid one were ever stored (a truncated file is
    # refused at upload); none failed
    assert statuses.count("done") == 1 and "failed" not in statuses
    assert statuses.count("rejected") == len(WORKER) + len(MANIFESTS)
    web = psutil.Process(live.procs[1].pid)
    peak = max(_peak_rss(p) for p in [web, *web.children(recursive=True)])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "web_peak_rss.txt").write_text(f"{peak / 2**20:.0f} MiB\n")
    assert peak <= WEB_PEAK_RSS_LIMIT, f"web peak RSS {peak / 2**20:.0f} MiB"


def _peak_rss(process: psutil.Process) -> int:
    """VmHWM: the process's peak resident set size."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {process.pid}")
