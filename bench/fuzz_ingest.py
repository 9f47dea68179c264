"""Coverage-guided fuzzing of the ingest path with atheris (libFuzzer for Python).

One fuzz input drives one of three targets, picked by its first byte:

- ``reader``: the rest is a BSON file. ``bson_store.iter_records`` (fast path,
  resync, size limit) must not raise, its slots must tile the file from 0 to the
  end, and three chunk sizes must give the same slots;
- ``product``: the rest becomes one document (decoded as BSON, or built field by
  field from the bytes, so mutations reach every branch), checked by
  ``helpers.ingest.products.check_product`` in both modes, then turned into the Arrow table and
  the rejects frame the catalogue writes: nothing but a row or counted rejects;
- ``image``: the rest is a picture: ``check_jpeg_bytes``, ``jpeg_size`` and
  ``decode_image`` may only answer or raise ``ImageError``.

A crash (any other exception, or a broken invariant) is written under
``--artifacts``; after fixing it, copy the file to ``tests/data/fuzz_regressions/``
where ``tests/test_fuzz_regressions.py`` replays it through ``one_input``.

    .venv/bin/python bench/fuzz_ingest.py --seconds 300

prints the run length, the executions and the crashes. The fuzzing runs in a child
process (libFuzzer ends its process when it is done), restarted after a crash
until the time is spent. Seeds: documents and pictures of the built-in sample and,
when present, of the real Cdiscount sample.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("reader", "product", "image")
# Small limits make the size checks reachable by small inputs.
FUZZ_MAX_DOC = 4096
FUZZ_MAX_SIDE = 512
CHUNKS = (5, 64, 1 << 20)
KNOWN_CATEGORIES = {1000010653, 1000010667}


def _instrumented_imports() -> None:
    """Import the code under test inside atheris' instrumentation (coverage feedback)."""
    import atheris

    with atheris.instrument_imports(include=["helpers", "PIL"]):
        import PIL.Image  # noqa: F401
        import PIL.JpegImagePlugin  # noqa: F401

        import helpers.ingest.bson_store  # noqa: F401
        import helpers.ingest.jpeg  # noqa: F401
        import helpers.ingest.products  # noqa: F401
        import helpers.ingest.scan  # noqa: F401


# ---------------------------------------------------------------- the targets


def fuzz_reader(data: bytes) -> None:
    from helpers.ingest import bson_store

    fd, name = tempfile.mkstemp(suffix=".bson", dir=_scratch())
    try:
        os.write(fd, data)
        os.close(fd)
        runs = []
        for chunk in CHUNKS:
            recs = list(bson_store.iter_records(name, chunk_size=chunk, max_doc=FUZZ_MAX_DOC))
            pos = 0
            for r in recs:
                assert r.offset == pos, f"slot at {r.offset}, previous ended at {pos}"
                assert r.length > 0, f"empty slot at {r.offset}"
                assert (r.doc is None) != (r.error is None), r
                if r.doc is not None:
                    assert bson.decode(data[r.offset : r.offset + r.length]) == r.doc
                    assert r.length <= FUZZ_MAX_DOC
                pos = r.offset + r.length
            assert pos == len(data), f"slots end at {pos}, file at {len(data)}"
            runs.append([(r.offset, r.length, r.error) for r in recs])
        assert runs[0] == runs[1] == runs[2], "chunk size changed the slots"
        for off, length, err in runs[0]:
            if err is not None and not err.endswith("skipped it"):
                hidden = _decodable_inside(data, off, length)
                assert hidden is None, f"document at {hidden} hidden in the bad slot at {off}"
        # A range scan from a slot boundary sees the same slots from there.
        if len(runs[0]) > 1:
            mid = runs[0][len(runs[0]) // 2][0]
            tail = [(r.offset, r.length, r.error) for r in
                    bson_store.iter_records(name, mid, max_doc=FUZZ_MAX_DOC)]
            assert tail == [s for s in runs[0] if s[0] >= mid], "range scan differs"
    finally:
        os.unlink(name)


def _decodable_inside(data: bytes, off: int, length: int) -> int | None:
    """A document the reader's resync should have stopped at, inside a bad slot: an
    ``_id`` anchor whose document is whole and decodable (None if there is none)."""
    from helpers.ingest import bson_store

    hit = data.find(b"_id\x00", off + 6)
    while 0 <= hit and hit - 5 < off + length:
        c = hit - 5
        (n,) = struct.unpack_from("<i", data, c)
        if bson_store.MIN_DOC <= n <= FUZZ_MAX_DOC and c + n <= len(data) and \
                data[c + n - 1] == 0:
            try:
                bson.decode(data[c : c + n])
                return c
            except (bson.errors.BSONError, ValueError, OverflowError):
                pass
        hit = data.find(b"_id\x00", hit + 1)
    return None


def _build_doc(data: bytes) -> dict:
    """A product document built from the fuzz bytes: each field of any BSON-ish type."""
    fdp = _FDP(data)
    pick = fdp.int(8)
    values = [lambda: fdp.int(2**31), lambda: -fdp.int(2**62), lambda: bson.int64.Int64(
        fdp.int(2**62)), lambda: fdp.bytes(8).decode("latin-1"), lambda: float(fdp.int(99)),
        lambda: None, lambda: bool(fdp.int(1)), lambda: [fdp.int(9)], lambda: {"x": 1}]
    doc: dict = {}
    if pick & 1:
        doc["_id"] = values[fdp.int(len(values) - 1)]()
    if pick & 2:
        doc["category_id"] = (sorted(KNOWN_CATEGORIES)[fdp.int(1)] if fdp.int(1)
                              else values[fdp.int(len(values) - 1)]())
    if pick & 4:
        kind = fdp.int(3)
        if kind == 0:
            doc["imgs"] = values[fdp.int(len(values) - 1)]()
        else:
            imgs = []
            for _ in range(fdp.int(4)):
                what = fdp.int(3)
                if what == 0:
                    imgs.append(values[fdp.int(len(values) - 1)]())
                elif what == 1:
                    imgs.append({"picture": values[fdp.int(len(values) - 1)]()})
                else:
                    imgs.append({"picture": _jpeg_from(fdp.bytes(fdp.int(4096)))})
            doc["imgs"] = imgs
    return doc


def _jpeg_from(raw: bytes) -> bytes:
    """Fuzz bytes made to look like a JPEG more often than not (start and end markers)."""
    if raw[:1] == b"\x00":
        return raw[1:]
    return b"\xff\xd8" + raw + b"\xff\xd9"


def fuzz_product(data: bytes) -> None:
    import pandas as pd
    import pyarrow as pa

    from helpers.ingest import bson_store, products

    if data[:1] == b"\x00":
        try:
            doc = bson.decode(data[1:])
        except (bson.errors.BSONError, ValueError, OverflowError):
            return
    else:
        doc = _build_doc(data[1:])
    rec = bson_store.Record(0, len(data), doc)
    rejects = []
    for verify in ("magic", "decode"):
        for known in (None, KNOWN_CATEGORIES):
            part = products.Part()
            products.check_product(rec, part, known, verify, FUZZ_MAX_SIDE)
            rows = len(part.cols["product_id"])
            assert rows in (0, 1)
            refused = [r for r in part.rejects if r[0] != "image"]
            assert rows + len(refused) == 1, (rows, part.rejects)  # kept xor rejected
            for r in part.rejects:
                assert r[5] and isinstance(r[6], str) and len(r[6]) < 1000, r
            pa.table(part.cols, schema=products.SCHEMA)  # what checkpoint._flush writes
            rejects += part.rejects
    if rejects:  # the rejects part file, as checkpoint._flush writes it (one frame: pandas is slow)
        pa.Table.from_pandas(pd.DataFrame(rejects, columns=products.REJECT_COLUMNS))


def fuzz_image(data: bytes) -> None:
    from helpers.ingest import jpeg as images

    why = images.check_jpeg_bytes(data)
    size = images.jpeg_size(data)
    assert size is None or (isinstance(size, tuple) and len(size) == 2)
    images.too_large(data, FUZZ_MAX_SIDE)
    for side in (None, 32):
        try:
            arr = images.decode_image(data, side, max_side=FUZZ_MAX_SIDE)
        except images.ImageError:
            continue
        assert arr.dtype.name == "uint8" and arr.ndim == 3 and arr.shape[2] == 3
        assert max(arr.shape[:2]) <= FUZZ_MAX_SIDE
        if side is not None:
            assert arr.shape[:2] == (side, side)
    del why


def one_input(data: bytes) -> None:
    """The fuzz target: the first byte picks the target, the rest is its input."""
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    {"reader": fuzz_reader, "product": fuzz_product, "image": fuzz_image}[target](data[1:])


_SCRATCH: str | None = None


def _scratch() -> str:
    """A folder in memory for the reader's files (/dev/shm when there is one)."""
    global _SCRATCH
    if _SCRATCH is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        _SCRATCH = tempfile.mkdtemp(prefix="fuzz-ingest-", dir=base)
    return _SCRATCH


class _FDP:
    """A tiny FuzzedDataProvider: atheris' own is not importable without atheris, and
    the regression test replays inputs without it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self, top: int) -> int:
        """An int in [0, top] from the next bytes (0 once the data is used up)."""
        n = max(1, (top.bit_length() + 7) // 8)
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return int.from_bytes(raw.ljust(n, b"\x00"), "little") % (top + 1)

    def bytes(self, n: int) -> bytes:
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw


# ---------------------------------------------------------------- seeds and driver


def seeds(folder: Path) -> int:
    """Write seed inputs (real documents, files, pictures) to ``folder``; returns count."""
    from helpers.core.paths import CDISCOUNT_DIR, SAMPLE_BSON
    from helpers.ingest import bson_store

    files = [SAMPLE_BSON, CDISCOUNT_DIR / "train_example.bson"]
    docs = []
    for path in files:
        if path.exists():
            docs += [r.doc for r, _ in zip(bson_store.iter_records(path), range(12),
                                           strict=False)]
    raw = [bson.encode(d) for d in docs]
    out = []
    for i in range(0, len(raw), 3):
        out.append(b"\x00" + b"".join(raw[i : i + 3]))  # reader: a few documents
    out.append(b"\x00" + raw[0] + b"GARBAGE!" * 4 + raw[1] + raw[2][:-9])
    out += [b"\x01\x00" + r for r in raw]  # product: the real documents
    out += [b"\x01\x07" + bytes(range(40))]  # product: built field by field
    out += [b"\x02" + img["picture"] for d in docs[:8] for img in d["imgs"]]
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(out):
        (folder / f"seed-{i:03d}").write_bytes(data)
    return len(out)


def _child(corpus: str, artifacts: str, seconds: int, max_len: int) -> None:
    import atheris

    _instrumented_imports()
    # ignore_stdout would hide tracebacks; limit the memory of one run (libFuzzer MB).
    atheris.Setup([sys.argv[0], corpus, f"-max_total_time={seconds}",
                   f"-artifact_prefix={artifacts}/", f"-max_len={max_len}",
                   "-rss_limit_mb=2048", "-timeout=20", "-print_final_stats=1"], one_input)
    atheris.Fuzz()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=120, help="total fuzzing time")
    ap.add_argument("--corpus", default=str(ROOT / "bench" / "data" / "fuzz_corpus"))
    ap.add_argument("--artifacts", default=str(ROOT / "bench" / "data" / "fuzz_crashes"))
    ap.add_argument("--max-len", type=int, default=20_000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.corpus, args.artifacts, args.seconds, args.max_len)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris (the dev extra has it)")
        return 2
    corpus, artifacts = Path(args.corpus), Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    n_seeds = seeds(corpus)
    t0, runs, crashes = time.monotonic(), 0, []
    while (left := args.seconds - (time.monotonic() - t0)) > 2:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--corpus", str(corpus), "--artifacts",
             str(artifacts), "--seconds", str(int(left)), "--max-len", str(args.max_len)],
            capture_output=True, text=True, cwd=ROOT)
        log = proc.stdout + proc.stderr
        runs += sum(int(m) for m in re.findall(r"stat::number_of_executed_units:\s*(\d+)", log))
        unit = re.findall(r"Test unit written to (\S+)", log)
        if proc.returncode != 0:
            where = unit[-1] if unit else "(no file)"
            tb = re.findall(r"=== Uncaught Python exception: ===\n(.*?)\n\n", log, re.S)
            crashes.append((where, tb[-1].strip().splitlines()[-1] if tb else log[-400:]))
            print(f"crash -> {where}\n{tb[-1] if tb else log[-2000:]}", flush=True)
            if not unit:
                break  # not a crash libFuzzer could save: stop rather than loop
    seconds = time.monotonic() - t0
    print(f"fuzz_ingest: {seconds:.0f} s, {runs:,} executions ({runs / seconds:,.0f}/s), "
          f"{n_seeds} seeds, corpus now {len(list(corpus.iterdir()))} inputs, "
          f"{len(crashes)} crash(es)")
    for where, why in crashes:
        print(f"  {where}: {why}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
