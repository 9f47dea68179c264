"""The vector store on its own: round trip, read-only memmap, resume after a kill, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.vectors import store as vs
from helpers.vectors.store import VectorStore, VectorStoreError, VectorWriter, encode_item_ids

DIM = 8
MADE_BY = {"model": "test", "backend": "none", "image_size": 224, "level": "image"}


def _chunks(n_chunks: int = 4, rows: int = 5, seed: int = 0) -> list[dict]:
    """Appends as embed_catalogue makes them: vectors, ids, the next catalogue row, stats."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_chunks):
        pids = 1000 + c * rows + np.arange(rows) // 2  # two images per product
        out.append({"vectors": rng.standard_normal((rows, DIM)).astype(np.float32),
                    "product_ids": pids, "image_index": np.arange(rows) % 2,
                    "next_row": (c + 1) * 3, "images": rows})
    return out


def _append(writer: VectorWriter, chunk: dict) -> None:
    writer.append(chunk["vectors"], chunk["product_ids"], chunk["image_index"],
                  chunk["next_row"], images=chunk["images"])


def _write(folder: Path, chunks: list[dict], meta: dict = MADE_BY) -> VectorStore:
    writer = VectorWriter(folder, DIM, meta)
    for chunk in chunks:
        _append(writer, chunk)
    return writer.close()


def _sizes(folder: Path) -> tuple[int, int]:
    return (folder / vs.VECTORS).stat().st_size, (folder / vs.IDS).stat().st_size


def test_round_trip(tmp_path):
    chunks = _chunks()
    store = _write(tmp_path, chunks)
    again = VectorStore(tmp_path)  # what a later process sees
    want = np.concatenate([c["vectors"] for c in chunks])
    pids = np.concatenate([c["product_ids"] for c in chunks])
    idx = np.concatenate([c["image_index"] for c in chunks])
    for s in (store, again):
        assert len(s) == 20 and s.dim == DIM and s.made_by == MADE_BY
        np.testing.assert_array_equal(s.vectors, want)
        np.testing.assert_array_equal(s.product_ids, pids)
        np.testing.assert_array_equal(s.image_index, idx)
        np.testing.assert_array_equal(s.item_ids, pids * 100 + idx)
        assert s.meta["next_row"] == 12 and s.meta["images"] == 20  # stats add up
        assert s.meta["complete"] is True
    assert again.vector(1001 * 100 + 1).tolist() == want[3].tolist()
    with pytest.raises(KeyError, match="not in the vector store"):
        again.vector(1001)  # a product id is not an image id
    assert "20 x 8, image level" in repr(again)


def test_product_level_ids(tmp_path):
    writer = VectorWriter(tmp_path, DIM, {**MADE_BY, "level": "product"})
    vecs = np.eye(3, DIM, dtype=np.float32)
    writer.append(vecs, [7, 3, 12_345_678], [-1, -1, -1], next_row=3)
    store = writer.close()
    np.testing.assert_array_equal(store.item_ids, [7, 3, 12_345_678])
    np.testing.assert_array_equal(store.vector(3), vecs[1])


def test_encode_item_ids():
    ids = encode_item_ids(np.array([5, 5, 99_999_999, 42]), np.array([0, 3, 3, -1]))
    assert ids.dtype == np.int64
    assert ids.tolist() == [500, 503, 9_999_999_903, 42]


def test_memmap_is_read_only(tmp_path):
    store = _write(tmp_path, _chunks(1))
    assert isinstance(store.vectors, np.memmap)
    assert not store.vectors.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        store.vectors[0, 0] = 1.0


def test_empty_store(tmp_path):
    store = VectorWriter(tmp_path, DIM, MADE_BY).close()
    assert len(store) == 0 and store.vectors.shape == (0, DIM)
    assert store.item_ids.shape == (0,)


@pytest.mark.parametrize("tail", ["whole_rows", "half_row"])
def test_resume_after_kill(tmp_path, monkeypatch, tail):
    chunks = _chunks()
    whole = _write(tmp_path / "whole", chunks)

    folder = tmp_path / "killed"
    writer = VectorWriter(folder, DIM, MADE_BY)
    _append(writer, chunks[0])
    _append(writer, chunks[1])
    if tail == "whole_rows":
        # Killed after the data writes of the third append, before its meta.json.
        def killed(*_args: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(vs, "_write_meta", killed)
        with pytest.raises(KeyboardInterrupt):
            _append(writer, chunks[2])
        monkeypatch.undo()
    else:  # killed in the middle of a write
        with open(folder / vs.VECTORS, "ab") as f:
            f.write(b"\x01" * (4 * DIM + 7))
        with open(folder / vs.IDS, "ab") as f:
            f.write(b"\x02" * 9)
    assert _sizes(folder)[0] > 10 * 4 * DIM
    with pytest.raises(VectorStoreError, match="unfinished"):
        VectorStore(folder)

    writer = VectorWriter(folder, DIM, MADE_BY)  # a new process picks it up
    assert writer.count == 10 and writer.next_row == 6
    assert _sizes(folder) == (10 * 4 * DIM, 10 * 16)  # the tail is gone
    _append(writer, chunks[2])
    _append(writer, chunks[3])
    store = writer.close()
    np.testing.assert_array_equal(store.vectors, whole.vectors)
    np.testing.assert_array_equal(store.item_ids, whole.item_ids)
    assert store.meta == whole.meta
    assert _sizes(folder) == _sizes(tmp_path / "whole")


def test_refuses_to_resume_other_settings(tmp_path):
    writer = VectorWriter(tmp_path, DIM, MADE_BY)
    _append(writer, _chunks(1)[0])
    with pytest.raises(VectorStoreError, match="unfinished store made by"):
        VectorWriter(tmp_path, DIM, {**MADE_BY, "image_size": 180})
    with pytest.raises(VectorStoreError, match="dim 8"):
        VectorWriter(tmp_path, DIM + 1, MADE_BY)
    assert VectorWriter(tmp_path, DIM, MADE_BY).count == 5  # refusals changed nothing
    assert VectorWriter(tmp_path, DIM + 1, MADE_BY, resume=False).count == 0  # a rebuild


def test_finished_store_is_not_reopened_for_writing(tmp_path):
    _write(tmp_path, _chunks(2))
    with pytest.raises(VectorStoreError, match="already complete"):
        VectorWriter(tmp_path, DIM, MADE_BY)
    assert len(VectorStore(tmp_path)) == 10


def test_refuses_unfinished_or_missing_store(tmp_path):
    with pytest.raises(VectorStoreError, match="no vector store"):
        VectorStore(tmp_path)
    writer = VectorWriter(tmp_path, DIM, MADE_BY)
    _append(writer, _chunks(1)[0])
    with pytest.raises(VectorStoreError, match=r"unfinished \(5 vectors\)"):
        VectorStore(tmp_path)


def test_expect_mismatch(tmp_path):
    _write(tmp_path, _chunks(1))
    assert len(VectorStore(tmp_path, expect={"model": "test", "image_size": 224})) == 5
    with pytest.raises(VectorStoreError, match=r"image_size: is 224, expected 180") as err:
        VectorStore(tmp_path, expect={"model": "test", "image_size": 180, "level": "product"})
    assert "level: is 'image', expected 'product'" in str(err.value)
    assert "model" not in str(err.value)  # only the keys that differ are named
    with pytest.raises(VectorStoreError, match="weights: is '<missing>'"):
        VectorStore(tmp_path, expect={"weights": "x.pth"})  # a key the store lacks


def test_shape_errors(tmp_path):
    writer = VectorWriter(tmp_path, DIM, MADE_BY)
    _append(writer, _chunks(1)[0])
    before = _sizes(tmp_path)
    bad = [
        (np.zeros((2, DIM + 1)), [1, 2], [0, 0]),  # wrong dim
        (np.zeros(DIM), [1], [0]),  # one vector without its batch axis
        (np.zeros((2, 3, DIM)), [1, 2], [0, 0]),
        (np.zeros((2, DIM)), [1, 2, 3], [0, 0, 0]),  # more ids than vectors
        (np.zeros((3, DIM)), [1, 2], [0, 0]),  # fewer
    ]
    for vecs, pids, idx in bad:
        with pytest.raises(VectorStoreError):
            writer.append(vecs, pids, idx, next_row=9)
    # a refused append leaves nothing behind
    assert _sizes(tmp_path) == before and writer.count == 5 and writer.next_row == 3
    assert len(writer.close()) == 5


def test_refuses_data_shorter_than_meta(tmp_path):
    """Data lost under a kept meta.json (no fsync, power cut): an error, not zero vectors."""
    writer = VectorWriter(tmp_path, DIM, MADE_BY)
    _append(writer, _chunks(1)[0])
    with open(tmp_path / vs.VECTORS, "r+b") as f:
        f.truncate(3 * 4 * DIM)
    with pytest.raises(VectorStoreError, match="fewer than the 5 rows"):
        VectorWriter(tmp_path, DIM, MADE_BY)
