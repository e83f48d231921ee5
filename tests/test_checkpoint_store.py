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


def chunked(parts: list[bytes], buffer: list[bytes], **extra: object) -> dict[str, object]:
    """A version-2 manifest holding one chunked entry (4-byte chunks); ``extra`` overrides
    fields of the entry."""
    entry = {
        "stream": [sha(c) for c in parts],
        "buffers": [{"size": sum(map(len, buffer)), "chunks": [sha(c) for c in buffer]}],
        "chunk_bytes": 4,
        "size": sum(map(len, parts)) + sum(map(len, buffer)),
        "serializer": "pickle",
    }
    return {"version": 2, "vars": {"arr": {**entry, **extra}}}


def test_a_chunked_checkpoint_asks_for_the_chunks_it_lacks(stores: Stores) -> None:
    """A chunked entry's stream and buffer chunks are blobs: only the missing ones are asked
    for, and the manifest is stored when the last one arrives."""
    store = stores.checkpoints
    store.write_blob(b"5678")  # an unchanged chunk, sent by an earlier checkpoint
    offer = chunked([b"head", b"er"], [b"1234", b"5678", b"9"])
    asked = store.offer("job-1", 1, "c0", offer)
    assert asked == sorted(sha(c) for c in [b"head", b"er", b"1234", b"9"])
    for data in (b"head", b"er", b"1234"):
        store.write_blob(data)
        assert store.blob_stored(sha(data)) == []
    store.write_blob(b"9")
    assert store.blob_stored(sha(b"9")) == [("job-1", 1, "c0")]
    assert store.attempt("job-1", 1).read_manifest("c0") == offer


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        ({"version": 3, "vars": {}}, "version 3"),
        (chunked([b"head"], [b"1234", b"5678"], size=20), "do not match"),
        (chunked([b"head"], [b"1234"], stream="nope"), "must be lists"),
        (chunked([b"head"], [b"1234"], buffers=[{"size": 4, "chunks": ["../x"]}]), "bad blob"),
    ],
)
def test_manifests_a_reader_cannot_use_are_refused(
    stores: Stores, manifest: dict[str, object], why: str
) -> None:
    """A newer manifest version, or chunk lists that do not add up to the sizes, are refused
    before anything is stored."""
    with pytest.raises(CheckpointError, match=why):
        stores.checkpoints.offer("job-1", 1, "c0", manifest)
    assert stores.checkpoints.stored_cells("job-1", 1) == []
