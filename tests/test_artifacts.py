"""Artifacts: atomic writes, manifests, folders named by settings, index versions."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from helpers.core import artifacts
from helpers.core.artifacts import ArtifactError
from helpers.index import IndexMismatchError, build_index, load_index
from helpers.vectors.store import VectorStore, VectorStoreError, VectorWriter
from helpers.workspace import Workspace

# -- atomic writes --------------------------------------------------------------------------


def test_atomic_write_is_world_readable_fsynced_and_clean(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o077)  # a strict umask, as a service account may have
    try:
        artifacts.write_json(tmp_path / "a.json", {"x": 1})
        artifacts.write_bytes(tmp_path / "b.bin", b"abc")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert len(synced) >= 2  # each file (and its folder) reached the disk before the rename
    assert artifacts.read_json(tmp_path / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "meta.json"
    artifacts.write_json(target, {"v": 1})

    def boom(p):
        p.write_text("{half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        artifacts.atomic_write(target, boom)
    assert artifacts.read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]  # no temp left


def test_concurrent_writers_never_clash(tmp_path):
    """Unique temp names: many writers of one file, each result whole (one of theirs)."""
    target = tmp_path / "x.json"
    errors = []

    def write(i):
        try:
            for _ in range(20):
                artifacts.write_json(target, {"writer": i, "pad": "x" * 5000})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and artifacts.read_json(target)["writer"] in range(6)


def test_read_json_names_the_bad_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="bad.json is unreadable"):
        artifacts.read_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        artifacts.read_json(tmp_path / "list.json")
    assert artifacts.read_json(tmp_path / "none.json", missing_ok=True) is None


def test_settings_diff_names_only_what_differs():
    d = artifacts.settings_diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    assert d == {"b": (2, 3), "c": ("<missing>", 4)}
    assert artifacts.describe_diff(d) == "b: has 2, expected 3; c: has '<missing>', expected 4"


def test_content_id_follows_settings_not_order():
    a = artifacts.content_id({"x": 1, "y": [1, 2]}, {"in": "abc"})
    assert a == artifacts.content_id({"y": [1, 2], "x": 1}, {"in": "abc"})
    assert a != artifacts.content_id({"x": 2, "y": [1, 2]}, {"in": "abc"})
    assert a != artifacts.content_id({"x": 1, "y": [1, 2]}, {"in": "abd"})


# -- vector store manifests -----------------------------------------------------------------

MADE = {"model": "m", "backend": "onnx", "image_size": 224, "level": "product",
        "source": "/x.bson", "catalogue_rows": 3, "catalogue_sha256": "c0ffee"}


def _store(folder, made=MADE, seed=0) -> VectorStore:
    w = VectorWriter(folder, 4, made)
    v = np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32)
    w.append(v, [1, 2, 3], [-1, -1, -1], next_row=3)
    return w.close()


def test_store_manifest_chain(tmp_path):
    s = _store(tmp_path / "s")
    m = artifacts.read_manifest(s.folder)
    assert m["kind"] == "vectors" and m["id"] == s.id
    assert m["settings"]["image_size"] == 224 and m["inputs"] == {"catalogue": "c0ffee"}
    assert m["chain"]["catalogue"]["source"] == "/x.bson"
    other = _store(tmp_path / "t", {**MADE, "image_size": 180})
    assert other.id != s.id


def test_store_with_a_foreign_manifest_is_refused(tmp_path):
    s = _store(tmp_path / "s")
    meta = json.loads((s.folder / "meta.json").read_text())
    meta["made_by"]["image_size"] = 180  # meta edited by hand: the manifest disagrees
    (s.folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(VectorStoreError, match="does not match meta.json"):
        VectorStore(s.folder)


@pytest.mark.parametrize("change,named", [({"image_size": 180}, "image_size"),
                                          ({"level": "image"}, "level"),
                                          ({"backend": "tf"}, "backend"),
                                          ({"catalogue_sha256": "beef"}, "catalogue")])
def test_index_of_other_vectors_is_refused(tmp_path, change, named):
    store = _store(tmp_path / "s")
    index = build_index("faiss", store.vectors, store.item_ids, factory="Flat", source=store)
    path = index.save(tmp_path / "idx")
    assert len(load_index(path, vectors=store)) == 3  # its own store: fine
    other = _store(tmp_path / "o", {**MADE, **change})
    with pytest.raises(IndexMismatchError, match=named):
        load_index(path, vectors=other)


# -- index versions -------------------------------------------------------------------------


def test_index_save_is_atomic_as_a_set(tmp_path):
    rng = np.random.default_rng(0)
    v1 = rng.standard_normal((50, 8)).astype(np.float32)
    path = tmp_path / "idx"
    build_index("exact", v1, np.arange(50)).save(path)
    first = artifacts.resolve_version(path)
    # A reader resolves `current` once; a new save must not change what it reads.
    v2 = rng.standard_normal((80, 8)).astype(np.float32)
    build_index("exact", v2, np.arange(100, 180)).save(path)
    assert artifacts.resolve_version(path) != first and first.is_dir()
    old_ids = np.load(first / "ids.npy")
    assert len(old_ids) == len(np.load(first / "vectors.npy")) == 50  # a whole old version
    assert len(load_index(path)) == 80
    # A save that dies half way leaves `current` on the last whole version.
    bad = build_index("exact", v1, np.arange(50))

    def dying(target):
        raise OSError("killed while writing the engine")

    bad._save_engine = dying
    with pytest.raises(OSError, match="killed"):
        bad.save(path)
    assert len(load_index(path)) == 80
    assert not [p for p in path.iterdir() if p.name.startswith(".tmp")]


def test_a_published_folder_is_synced_before_its_rename(tmp_path, monkeypatch):
    """Engines write their own files, unsynced: the folder's publish syncs them, so a
    version under its final name is whole after a power loss too."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name a descriptor's file")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))),
        real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (
        events.append(("rename", os.path.basename(b))), real_replace(a, b)))

    def build(d):
        (d / "engine.bin").write_bytes(b"index")  # as faiss.write_index would: no fsync
        (d / "sub").mkdir()
        (d / "sub" / "part.bin").write_bytes(b"part")

    artifacts.publish_dir(tmp_path / "idx", build)
    first_rename = events.index(("rename", "idx"))
    synced = {name for kind, name in events[:first_rename] if kind == "fsync"}
    assert {"engine.bin", "part.bin", "sub"} <= synced


def test_index_versions_kept_are_bounded(tmp_path):
    v = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    for _ in range(4):
        build_index("exact", v, np.arange(10)).save(tmp_path / "idx")
    versions = [p for p in (tmp_path / "idx").iterdir() if p.name.startswith("v-")]
    assert len(versions) == 2  # the current one and the one before (a reader may hold it)


# -- workspace folders ----------------------------------------------------------------------


def test_runs_with_other_settings_never_share_a_folder(tmp_path, sample_bson,
                                                       sample_categories):
    ws = Workspace(tmp_path)
    a = ws.catalogue(sample_bson, sample_categories, limit=20)
    assert ws.catalogue_dir(sample_bson, sample_categories, limit=20) != \
        ws.catalogue_dir(sample_bson, sample_categories, limit=30)
    b = Workspace(tmp_path / "other").catalogue(sample_bson, sample_categories, limit=30)
    assert len(a) == 20 and len(b) == 30
    assert len(ws.catalogue(sample_bson, sample_categories, limit=20)) == 20  # reused
    assert len(ws.find("catalogue")) == 1
    meta = {"model": "m", "backend": "onnx"}
    assert ws.vectors_dir(meta, 224, "product", a) != ws.vectors_dir(meta, 224, "product", b)
    assert ws.vectors_dir(meta, 224, "product", a) != ws.vectors_dir(meta, 180, "product", a)
    assert ws.vectors_dir(meta, 224, "product", a) != ws.vectors_dir(meta, 224, "image", a)
    assert ws.vectors_dir(meta, 224, "product", a) != \
        ws.vectors_dir({**meta, "backend": "tf"}, 224, "product", a)


def test_a_notebook_with_other_settings_than_its_run_is_refused(tmp_path, sample_bson,
                                                                 sample_categories):
    """One run configuration: the run's first catalogue sets it (run.json); a notebook
    given another skip or limit is refused, naming the difference, instead of building a
    second catalogue that the run's other notebooks never see."""
    from helpers.workspace import RunSettingsError

    ws = Workspace(tmp_path)
    folder = ws.catalogue_dir(sample_bson, sample_categories, claim=True, skip=5, limit=20)
    assert (tmp_path / "run.json").exists()
    with pytest.raises(RunSettingsError, match=r"skip: run 5, asked 0.*limit|limit.*skip"):
        ws.catalogue(sample_bson, sample_categories, limit=30)
    with pytest.raises(RunSettingsError, match="verify_images: run 'magic', asked 'decode'"):
        ws.catalogue(sample_bson, sample_categories, skip=5, limit=20, verify_images="decode")
    assert not folder.exists() and len(ws.find("catalogue")) == 0  # nothing was built
    got = ws.catalogue(sample_bson, sample_categories, skip=5, limit=20)  # the run's: fine
    assert len(got) == 20 and ws.catalogue_dir(sample_bson, sample_categories, skip=5,
                                               limit=20) == folder
