"""A track whose reference network sees too little of its receptive field in each sliding-window
patch says so on its page, as its results do; the same network at a patch that fits does not."""

import pytest
import torch
from leaderboard_fixtures import site_storage
from test_sequential import dilated_layers, sequential_spec

from harness.models.reference import save_reference_model
from leaderboard.tracks.seeding import create_track, import_dataset, import_model

__all__ = ["site_storage"]


@pytest.mark.parametrize(("roi", "warned"), [(16, True), (64, False)], ids=["roi16", "roi64"])
def test_the_track_page_warns_when_the_receptive_field_exceeds_the_patch(
    client, db, tiny_track, site_storage, roi, warned
):
    spec = sequential_spec(dilated_layers([1, 4, 8]), roi=roi)  # receptive field 27 voxels
    torch.manual_seed(0)
    folder = save_reference_model(spec.build(), spec, site_storage / f"dilated-{roi}")
    model = import_model(folder, slug=f"dilated-{roi}")
    track = create_track(import_dataset(tiny_track[0], slug="tiny"), model, weight_bits=8,
                         activation_bits=8)  # fmt: skip
    page = client.get(f"/tracks/{track.slug}/").content.decode()
    assert ('id="track-warnings"' in page) is warned
    if warned:
        assert "receptive field [27, 27, 27] inside the patch" in page
