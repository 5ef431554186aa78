"""Phases: a track's test cases split into a public split (ranked and shown per case during the
phase) and a private one (scored, maintainers only, published as the final ranking when the phase
ends). An anonymous visitor and a participant never see a private case id or a private-split
figure before the end — on any page or API response of the entry — nor a private per-case result
after it, when the board ranks on the private split."""

import json
import shutil
from datetime import timedelta

import pytest
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_checkpoints
from rest_framework.test import APIClient
from test_api_submissions import post_checkpoint

from harness.data.dataset import load_dataset, write_splits
from harness.scoring.splits import PRIVATE, PUBLIC, split_cases
from leaderboard.accounts.models import ApiToken
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Evaluation, EvaluationVersion
from leaderboard.submissions.reconciler import Reconciler
from leaderboard.tracks.models import Track
from leaderboard.tracks.phases import publish_due

__all__ = ["site_storage", "tiny_checkpoints"]


def test_split_is_a_seeded_deterministic_share_of_the_case_ids():
    ids = [f"case_{i:03d}" for i in range(10)]
    split = split_cases(ids, 0.5, seed=7)
    assert split == split_cases(list(ids), 0.5, seed=7)  # the same every time
    assert len(split[PUBLIC]) == 5 and sorted(split[PUBLIC] + split[PRIVATE]) == ids
    assert split[PUBLIC] != split_cases(ids, 0.5, seed=8)[PUBLIC]  # the seed draws it
    assert len(split_cases(ids, 0.25, 0)[PUBLIC]) == 3  # ⌈2.5⌉
    assert split_cases(ids, 1.0, 0)[PRIVATE] == []
    assert split_cases(["only"], 0.5, 0) == {PUBLIC: ["only"], PRIVATE: []}
    with pytest.raises(ValueError, match="public_fraction"):
        split_cases(ids, 0.0, 0)


@pytest.fixture
def phase_track(db, tiny_track, site_storage, tmp_path) -> Track:
    """The tiny model on a copy of the tiny dataset with three test cases: two public, one
    private."""
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    dataset_dir, model_dir = tiny_track
    copy = shutil.copytree(dataset_dir, tmp_path / "dataset")
    ids = sorted(c.case_id for c in load_dataset(copy).cases)
    write_splits(copy, {"train": [], "calibration": ids[:1], "test": ids[1:]})
    track = create_track(
        import_dataset(copy, slug="tiny3"), import_model(model_dir), weight_bits=8,
        activation_bits=8, bits_per_weight_budget=9,
    )  # fmt: skip
    assert track.public_fraction == 0.5
    return track


def _user_with_token(django_user_model, name: str, **extra):
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123", **extra)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, 'test')[1]}")
    return user, client


@pytest.fixture
def entries(phase_track, tiny_checkpoints, django_user_model):
    """Two participants' done entries; (alice's API client, the two submission ids)."""
    ids, alice_api = [], None
    for name in ("alice", "bob"):
        _, api = _user_with_token(django_user_model, name)
        created = post_checkpoint(api, phase_track, tiny_checkpoints["w8a8"], method=name)
        assert created.status_code == 201, created.json()
        assert pipeline.run(created.json()["id"]) == "done"
        ids.append(created.json()["id"])
        alice_api = alice_api or api
    return alice_api, ids


def _entry_urls(track: Track, ids: list[int]) -> list[str]:
    """Every page and API response that shows something of the entries."""
    pk, other = ids
    compare = f"ids={pk}&ids={other}"
    as_of = (timezone.now() + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    return [
        f"/tracks/{track.slug}/", f"/tracks/{track.slug}/?as_of={as_of}",
        f"/tracks/{track.slug}/compare/?{compare}",
        f"/api/v1/tracks/{track.slug}/compare/?{compare}",
        f"/api/v1/tracks/{track.slug}/", f"/api/v1/tracks/{track.slug}/leaderboard/",
        f"/api/v1/tracks/{track.slug}/leaderboard/?format=csv",
        f"/api/v1/tracks/{track.slug}/leaderboard/?as_of={as_of}",
        f"/submissions/{pk}/", f"/submissions/{pk}/status", f"/api/v1/submissions/{pk}/",
        f"/api/v1/submissions/{pk}/result/", "/api/v1/submissions/", "/submissions/", "/",
        "/study/", f"/study/{track.reference_model.slug}/",
    ]  # fmt: skip


def _bodies(client, urls: list[str]) -> dict[str, str]:
    bodies = {}
    for url in urls:
        response = client.get(url, follow=True)
        assert response.status_code < 500, url
        bodies[url] = response.content.decode()
    return bodies


def _figures(split: dict) -> list[str]:
    """A split's figures as JSON and the pages print them (full precision and 4 decimals)."""
    values = [split["summary"]["mean_dsc"], split["summary"]["mean_nsd"]]
    values += [c["mean_dsc"] for c in split["per_class"].values()]
    return [json.dumps(v) for v in values] + [f"{v:.4f}" for v in values[:2]]


def _assert_nothing_private(bodies: dict[str, str], private_ids: list[str], figures: list[str]):
    for url, body in bodies.items():
        for case_id in private_ids:
            assert case_id not in body, f"{url} shows the private case {case_id}"
        for figure in figures:
            assert figure not in body, f"{url} shows the private-split figure {figure}"


def test_before_the_end_nobody_but_staff_sees_the_private_split(
    phase_track, entries, client, django_user_model
):
    alice_api, ids = entries
    result = Evaluation.objects.get(submission_id=ids[0]).result
    public, private = result["splits"][PUBLIC], result["splits"][PRIVATE]
    assert len(public["case_ids"]) == 2 and len(private["case_ids"]) == 1
    assert public["summary"]["mean_dsc"] != result["summary"]["mean_dsc"]  # they differ here
    # the board ranks on the public split: its columns are the public split's figures
    row = alice_api.get(f"/api/v1/tracks/{phase_track.slug}/leaderboard/").json()["results"][0]
    assert row["mean_dsc"] == public["summary"]["mean_dsc"]
    # private figures: the private split's and every all-cases figure that mixes it in
    hidden = _figures(private) + [json.dumps(result["summary"]["mean_dsc"])]
    urls = _entry_urls(phase_track, ids)

    _assert_nothing_private(_bodies(client, urls), private["case_ids"], hidden)  # anonymous
    alice = django_user_model.objects.get(username="alice")
    client.force_login(alice)  # the owner of the first entry, on its own pages too
    bodies = _bodies(client, urls)
    _assert_nothing_private(bodies, private["case_ids"], hidden)
    shown = json.loads(bodies[f"/api/v1/submissions/{ids[0]}/result/"])
    assert [c["case_id"] for c in shown["cases"]] == public["case_ids"]  # public: per case
    assert shown["summary"]["mean_dsc"] == public["summary"]["mean_dsc"]
    assert set(shown["splits"]) == {PUBLIC}
    api_bodies = {u: alice_api.get(u).content.decode() for u in urls if u.startswith("/api/")}
    _assert_nothing_private(api_bodies, private["case_ids"], hidden)  # token clients alike

    staff, staff_api = _user_with_token(django_user_model, "maintainer", is_staff=True)
    full = staff_api.get(f"/api/v1/submissions/{ids[0]}/result/").json()
    assert full == result  # maintainers see all of it
    client.force_login(staff)
    assert private["case_ids"][0] in client.get(f"/submissions/{ids[0]}/").content.decode()


def test_after_the_end_the_final_ranking_on_the_private_split_is_published(
    phase_track, entries, client
):
    alice_api, ids = entries
    result = Evaluation.objects.get(submission_id=ids[0]).result
    private = result["splits"][PRIVATE]
    assert publish_due() == []  # no end set: the phase runs on
    phase_track.closes_at = timezone.now() - timedelta(minutes=1)
    phase_track.save()

    assert Reconciler().reconcile()["final ranking published"] == 1  # the reconciler's pass
    assert Track.objects.get(pk=phase_track.pk).ranked_split == PRIVATE
    for model in (Evaluation, EvaluationVersion):  # boards now and as of any time agree
        assert {r.mean_dsc for r in model.objects.filter(track=phase_track)} == {
            private["summary"]["mean_dsc"]
        }
    row = client.get(f"/api/v1/tracks/{phase_track.slug}/leaderboard/").json()["results"][0]
    assert row["mean_dsc"] == private["summary"]["mean_dsc"]
    page = client.get(f"/tracks/{phase_track.slug}/").content.decode()
    assert "<strong>Final ranking</strong>" in page
    shown = client.get(f"/api/v1/submissions/{ids[0]}/result/").json()
    assert shown["summary"]["mean_dsc"] == private["summary"]["mean_dsc"]
    assert shown["splits"][PRIVATE] == {k: v for k, v in private.items() if k != "case_ids"}
    # per-case results of the private split stay hidden
    bodies = _bodies(client, _entry_urls(phase_track, ids))
    _assert_nothing_private(bodies, private["case_ids"], [])
    assert publish_due() == []  # published once
