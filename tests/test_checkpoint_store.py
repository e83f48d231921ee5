"""The CheckpointStore interface, run against every backend: manifests complete before they
appear, blobs asked for once, names checked, each attempt's notebook so far."""

from __future__ import annotations

import hashlib

import pytest

from casare_nb.notebook.state import CheckpointError
from casare_nb.store.interfaces import Stores


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(**blobs: bytes) -> dict[str, object]:
    return {"vars": {name: {"blob": sha(data)} for name, data in blobs.items()}}


def test_manifest_is_written_only_once_all_its_blobs_are_stored(stores: Stores) -> None:
    """An offer asks for the missing blobs; the manifest appears after the last one arrives."""
    store = stores.checkpoints
    store.write_blob(b"kept")
    offer = manifest(a=b"kept", b=b"new-1", c=b"new-2")
    assert store.offer("job-1", 1, "c0", offer) == sorted([sha(b"new-1"), sha(b"new-2")])
    assert store.stored_cells("job-1", 1) == []
    store.write_blob(b"new-1")
    assert store.blob_stored(sha(b"new-1")) == []
    assert store.stored_cells("job-1", 1) == []
    store.write_blob(b"new-2")
    assert store.blob_stored(sha(b"new-2")) == [("job-1", 1, "c0")]
    assert store.stored_cells("job-1", 1) == ["c0"]
    assert store.offer("job-2", 1, "c0", offer) == []  # every blob is there: stored at once
    assert store.stored_cells("job-2", 1) == ["c0"]


def test_a_blob_two_offers_wait_for_is_asked_once(stores: Stores) -> None:
    """Two pending offers naming the same new blob ask for it once; one arrival completes both."""
    store = stores.checkpoints
    same = manifest(x=b"shared")
    assert store.offer("job-1", 1, "c0", same) == [sha(b"shared")]
    assert store.offer("job-1", 1, "c1", same) == []
    store.write_blob(b"shared")
    assert store.blob_stored(sha(b"shared")) == [("job-1", 1, "c0"), ("job-1", 1, "c1")]


@pytest.mark.parametrize(
    ("cell_id", "entry", "why"),
    [
        ("../../etc", {"blob": "0" * 64}, "not a valid nbformat cell id"),
        ("c0", {"ref": "../other.json"}, "bad ref"),
        ("c0", {"blob": "../../passwd"}, "bad blob"),
        ("c0", "not an object", "is not an object"),
    ],
)
def test_names_that_would_leave_the_store_are_refused(
    stores: Stores, cell_id: str, entry: object, why: str
) -> None:
    """Cell ids, refs and blob digests that could name a path outside the store are refused."""
    store = stores.checkpoints
    with pytest.raises(CheckpointError, match=why):
        store.offer("job-1", 1, cell_id, {"vars": {"x": entry}})
    assert not list(store.state.root.rglob("*.json"))


def test_notebook_so_far_takes_each_reported_cell(stores: Stores) -> None:
    """Reported cells replace theirs (by id) in the attempt's notebook; unknown ids are ignored."""
    store = stores.checkpoints
    base = {"cells": [{"id": "c0", "outputs": []}, {"id": "c1", "outputs": []}], "metadata": {}}
    store.record_cell("job-1", 1, {"id": "c1", "outputs": ["two"]}, base=base)
    store.record_cell("job-1", 1, {"id": "zz", "outputs": ["lost"]}, base=base)
    store.forget_attempt("job-1", 1)  # read back from disk
    store.record_cell("job-1", 1, {"id": "c0", "outputs": ["one"]}, base=None)
    text = store.attempt("job-1", 1).output.read_text()
    assert '"one"' in text and '"two"' in text and "lost" not in text
    assert base["cells"][1]["outputs"] == []  # the notebook sent is not modified
    assert store.latest_output("job-1", 3) == 1 and store.latest_output("job-9", 3) is None
