"""Upload checks of checkpoint archives: size, type, layout and path traversal."""

import io
import stat
import zipfile

import pytest
from leaderboard_fixtures import checkpoint_zip, tiny_checkpoints, zip_bytes

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.artifacts.uploads import UploadError
from leaderboard.submissions.artifacts import (
    check_checkpoint_zip,
    unpack_checkpoint,
)

__all__ = ["tiny_checkpoints"]
GOOD_WEIGHTS = b"\x02\x00\x00\x00\x00\x00\x00\x00{}"
GOOD_MANIFEST = b'{"layers": {}}'


def check(data: bytes) -> None:
    check_checkpoint_zip(io.BytesIO(data), len(data))


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"../manifest.json": GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS}, "unsafe path"),
        ({"/abs/manifest.json": GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS}, "unsafe path"),
        ({"C:\\manifest.json": GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS}, "unsafe path"),
        ({MANIFEST_NAME: GOOD_MANIFEST}, "missing weights.safetensors"),
        ({MANIFEST_NAME: GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS, "run.py": b"x"}, "unexpected"),
        ({MANIFEST_NAME: b"{not json", WEIGHTS_NAME: GOOD_WEIGHTS}, "not valid JSON"),
        ({MANIFEST_NAME: GOOD_MANIFEST, WEIGHTS_NAME: b"\x80" * 8}, "bad header length"),
        ({MANIFEST_NAME: GOOD_MANIFEST, "a/" + WEIGHTS_NAME: GOOD_WEIGHTS}, "same folder"),
    ],
)
def test_malformed_checkpoint_zips_are_refused_with_the_reason(members, message):
    with pytest.raises(UploadError, match=message):
        check(zip_bytes(members))


def test_symbolic_link_members_are_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo(MANIFEST_NAME)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr(WEIGHTS_NAME, GOOD_WEIGHTS)
    with pytest.raises(UploadError, match="symbolic link"):
        check(buffer.getvalue())


def test_uploads_over_the_size_limit_are_refused(settings):
    settings.MEDQUANT_MAX_ARTIFACT_BYTES = 100
    with pytest.raises(UploadError, match="the limit is"):
        check(zip_bytes({MANIFEST_NAME: GOOD_MANIFEST, WEIGHTS_NAME: GOOD_WEIGHTS * 20}))


def test_non_zip_upload_is_refused():
    with pytest.raises(UploadError, match="not a zip file"):
        check(b"PK but not really a zip file")


def test_unpacking_writes_exactly_the_two_checkpoint_files(tiny_checkpoints, tmp_path):
    data = checkpoint_zip(tiny_checkpoints["w8a8"], folder="nested")
    out = unpack_checkpoint(io.BytesIO(data), len(data), tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, WEIGHTS_NAME]
    for name in (MANIFEST_NAME, WEIGHTS_NAME):
        assert (out / name).read_bytes() == (tiny_checkpoints["w8a8"] / name).read_bytes()
