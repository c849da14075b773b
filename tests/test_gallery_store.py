"""The gallery stores (SQLite and a real PostgreSQL), the change log, the index and its threads."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gallery_support import postgres_bin, postgres_server

from facevib.gallery import (
    FaceIndex,
    Galleries,
    GalleryConflict,
    GalleryInfo,
    GalleryNotFound,
    NewFace,
    UnknownFace,
    UnknownSubject,
    open_store,
)
from facevib.gallery.index import ann_available

NO_POSTGRES = "PostgreSQL binaries (Debian package postgresql) are not installed"


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    if postgres_bin() is None:
        pytest.skip(NO_POSTGRES)
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"db": str(tmp_path / "faces.db")}
    url = request.getfixturevalue("pg_url")
    # A fresh schema per test: drop what the previous test left.
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS faces, galleries, changes")
    return {"url": url}


def faces_of(rng: np.random.Generator, subjects: list[str], dim: int = 8) -> list[NewFace]:
    vectors = unit(rng.standard_normal((len(subjects), dim)))
    return [NewFace(s, v, {"n": i}) for i, (s, v) in enumerate(zip(subjects, vectors, strict=True))]


def test_store_operations_and_their_errors(store_spec) -> None:
    store = open_store(**store_spec)
    rng = np.random.default_rng(0)
    assert store.create_gallery(GalleryInfo("staff", 8, {"site": "a"})) is True
    assert store.create_gallery(GalleryInfo("staff", 8, {"site": "a"})) is False  # idempotent
    with pytest.raises(GalleryConflict, match="staff"):
        store.create_gallery(GalleryInfo("staff", 16, {"site": "a"}))
    with pytest.raises(GalleryNotFound, match="nobody"):
        store.add_faces("nobody", faces_of(rng, ["x"]))
    new = faces_of(rng, ["ann", "ann", "bob"])
    ids = store.add_faces("staff", new)
    assert len(set(ids)) == 3
    seq, infos, stored = store.read_all()
    assert [i.name for i in infos] == ["staff"] and infos[0].metadata == {"site": "a"}
    by_id = {f.id: f for f in stored}
    for face_id, face in zip(ids, new, strict=True):
        assert by_id[face_id].subject == face.subject
        np.testing.assert_array_equal(by_id[face_id].embedding, face.embedding)  # float32 round trip is exact
    assert store.face_metadata("staff", ids[:2]) == {ids[0]: {"n": 0}, ids[1]: {"n": 1}}
    with pytest.raises(UnknownFace, match="nope"):
        store.remove_face("staff", "nope")
    with pytest.raises(UnknownSubject, match="carl"):
        store.remove_subject("staff", "carl")
    assert store.remove_face("staff", ids[2]) == "bob"
    assert sorted(store.remove_subject("staff", "ann")) == sorted(ids[:2])
    # The log, in order: create, 3 adds, remove bob, remove both of ann's.
    log = store.changes_since(0)
    assert [c.op for c in log] == ["create", "add", "add", "add", "remove", "remove", "remove"]
    assert [c.seq for c in log] == sorted(c.seq for c in log) and log[-1].seq == store.read_all()[0]
    assert all(c.face is None for c in log if c.op == "add")  # those faces are gone now
    assert store.changes_since(log[3].seq)[0].seq == log[4].seq
    assert store.drop_gallery("staff") == 0
    with pytest.raises(GalleryNotFound):
        store.gallery("staff")
    store.close()


def test_a_second_reader_follows_the_log(store_spec) -> None:
    """Two Galleries on one database (as two replicas): writes on one appear on the other after sync."""
    rng = np.random.default_rng(1)
    first, second = Galleries(open_store(**store_spec), poll_s=None), Galleries(open_store(**store_spec), poll_s=None)
    first.start()
    second.start()
    try:
        first.create("g", 8)
        ids = first.enroll("g", faces_of(rng, ["ann", "bob", "bob"]))
        assert second.names() == []
        assert second.sync() == 4
        assert second.describe("g")["faces"] == 3 and second.describe("g")["subjects"] == 2
        query = next(f.embedding for f in second.store.read_all()[2] if f.id == ids[0])
        assert second.search("g", query, 1)[0].face_id == ids[0]
        first.remove_subject("g", "bob")
        second.sync()
        assert second.describe("g")["faces"] == 1
        first.drop("g")
        first.create("g", 8)  # a new gallery of the same name starts empty everywhere
        second.sync()
        assert second.describe("g")["faces"] == 0
    finally:
        first.stop()
        second.stop()


def brute_force(rows: np.ndarray, subjects: list[str], ids: list[str], query: np.ndarray, k: int) -> list[tuple]:
    """Reference: score every face, keep each subject's best face, sort (a loop, no numpy tricks)."""
    best: dict[str, tuple[float, str]] = {}
    for row, subject, face_id in zip(rows, subjects, ids, strict=True):
        score = float(sum(float(a) * float(b) for a, b in zip(row, query, strict=True)))
        if subject not in best or score > best[subject][0]:
            best[subject] = (score, face_id)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
    return [(subject, face_id, score) for subject, (score, face_id) in ranked]


def test_exact_search_ranks_subjects_by_their_best_face() -> None:
    rng = np.random.default_rng(2)
    rows = unit(rng.standard_normal((60, 8)))
    subjects = [f"s{i % 13}" for i in range(60)]  # 13 subjects of 4 or 5 faces
    ids = [f"f{i}" for i in range(60)]
    index = FaceIndex(8)
    index.add(ids, subjects, rows)
    for query in unit(rng.standard_normal((5, 8))):
        got = [(m.subject, m.face_id, m.score) for m in index.search(query, 6)]
        want = brute_force(rows, subjects, ids, query, 6)
        assert [g[:2] for g in got] == [w[:2] for w in want]
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=0, atol=1e-5)
    assert len(index.search(rows[0], 100)) == 13  # top_k above the subject count: every subject once


def test_subject_score_is_the_max_over_faces_not_the_template_mean() -> None:
    index = FaceIndex(2)
    # Subject a: one face along the query and one opposite (best cosine 1, template mean (0, 0));
    # b: two faces at +-60 degrees (best cosine 0.5, template mean along the query: cosine 1).
    faces = np.array([[1, 0], [-1, 0], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)]], np.float32)
    index.add(["a1", "a2", "b1", "b2"], ["a", "a", "b", "b"], faces)
    matches = index.search(np.array([1, 0], np.float32), 2)
    assert [m.subject for m in matches] == ["a", "b"]  # a template mean would put b first
    assert matches[0].face_id == "a1" and matches[1].face_id in ("b1", "b2")
    assert matches[0].score == pytest.approx(1.0) and matches[1].score == pytest.approx(0.5)


def test_removal_moves_rows_and_search_never_returns_removed_faces() -> None:
    rng = np.random.default_rng(3)
    rows = unit(rng.standard_normal((30, 8)))
    index = FaceIndex(8)
    index.add([f"f{i}" for i in range(30)], [f"s{i}" for i in range(30)], rows)
    for i in range(0, 30, 2):
        assert index.remove(f"f{i}")
    assert not index.remove("f0") and len(index) == 15
    for i in range(1, 30, 2):  # every kept face is still its own best match
        assert index.search(rows[i], 1)[0].face_id == f"f{i}"


@pytest.mark.skipif(not ann_available(), reason="faiss (extra gallery-ann) is not installed")
def test_hamming_codes_above_the_exact_limit_find_planted_mates_and_honour_removals() -> None:
    rng = np.random.default_rng(4)
    n, dim = 3000, 64
    rows = unit(rng.standard_normal((n, dim)))
    index = FaceIndex(dim, exact_limit=1000, shortlist=32)
    index.add([f"f{i}" for i in range(n)], [f"s{i}" for i in range(n)], rows)
    assert index.kind == "hamming"
    mates = rng.choice(n, 200, replace=False)
    queries = unit(rows[mates] + 0.8 * unit(rng.standard_normal((200, dim))))  # cosine ~0.78 to the mate
    found = [index.search(q, 1)[0].face_id for q in queries]
    assert found == [f"f{m}" for m in mates]
    for match in index.search(queries[0], 5):  # scores are exact cosines, whatever proposed the face
        assert match.score == pytest.approx(float(rows[int(match.face_id[1:])] @ queries[0]), abs=1e-5)
    for m in mates[:50]:
        index.remove(f"f{m}")
    for q, m in zip(queries[:50], mates[:50], strict=True):
        assert index.search(q, 1)[0].face_id != f"f{m}"
    index.add(["new"], ["s-new"], queries[:1])
    assert index.search(queries[0], 1)[0].face_id == "new"


@pytest.mark.skipif(not ann_available(), reason="faiss (extra gallery-ann) is not installed")
def test_sign_code_hamming_distance_estimates_the_angle_over_pi() -> None:
    """Charikar's SimHash: each random hyperplane separates two vectors with probability theta / pi."""
    from facevib.gallery.index import _SignCodes

    rng = np.random.default_rng(7)
    dim, bits, pairs = 512, 512, 200
    a = unit(rng.standard_normal((pairs, dim)))
    b = unit(a + 1.33 * unit(rng.standard_normal((pairs, dim))))  # angles near 53 degrees
    theta = np.arccos(np.clip(np.sum(a * b, axis=1), -1, 1))
    codes = _SignCodes(dim, bits, seed=1)
    differing = np.unpackbits(codes.encode(a) ^ codes.encode(b), axis=1).sum(axis=1)
    expected = bits * theta / np.pi
    # Orthonormal directions make the bits at most as variable as independent ones: bound by the binomial.
    standard_error = np.sqrt(np.sum(bits * (theta / np.pi) * (1 - theta / np.pi))) / pairs
    assert abs(np.mean(differing - expected)) < 4 * standard_error


def test_concurrent_enroll_remove_search_keeps_index_and_store_equal(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    galleries = Galleries(open_store(db=str(tmp_path / "faces.db")), poll_s=0.01)  # follower thread races too
    galleries.start()
    galleries.create("g", 16)
    acknowledged: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    vectors = unit(rng.standard_normal((400, 16)))

    def writer(w: int) -> None:
        try:
            for i in range(25):
                start = (w * 25 + i) * 4
                ids = galleries.enroll("g", [NewFace(f"w{w}-{i}", v) for v in vectors[start : start + 4]])
                acknowledged[w].extend(ids)
                if i % 3 == 0:
                    galleries.remove_face("g", ids[0])
                    acknowledged[w].remove(ids[0])
        except BaseException as err:  # collected: the test fails below with it
            errors.append(err)

    def searcher() -> None:
        try:
            for q in vectors[:100]:
                for match in galleries.search("g", q, 3):
                    assert match.subject.startswith("w")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    galleries.sync()
    expected = sorted(i for ids in acknowledged for i in ids)
    stored = sorted(f.id for f in galleries.store.read_all()[2])
    assert stored == expected and galleries.describe("g")["faces"] == len(expected)
    for i, face_id in enumerate(expected[:40]):  # every live face is found as its own best match
        row = next(f for f in galleries.store.read_all()[2] if f.id == face_id)
        assert galleries.search("g", row.embedding, 1)[0].face_id == face_id, i
    galleries.stop()


def test_an_unwritable_database_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "faces.db"
    with pytest.raises(ValueError, match=str(missing)):
        open_store(db=str(missing))
    if os.geteuid() != 0:  # root writes read-only files anyway
        read_only = tmp_path / "ro.db"
        open_store(db=str(read_only)).close()
        read_only.chmod(stat.S_IRUSR)
        with pytest.raises(ValueError, match="ro.db"):
            open_store(db=str(read_only))
    with pytest.raises(ValueError, match="exactly one"):
        open_store()


@pytest.mark.skipif(not ann_available(), reason="faiss (extra gallery-ann) is not installed")
def test_hamming_churn_of_removals_and_additions_keeps_every_live_face_findable() -> None:
    rng = np.random.default_rng(6)
    dim = 32
    index = FaceIndex(dim, exact_limit=50, shortlist=16)
    live: dict[str, np.ndarray] = {}
    counter = 0
    for _ in range(6):  # add 40, remove 25 at random, repeatedly: codes are compacted
        vectors = unit(rng.standard_normal((40, dim)))
        ids = [f"f{counter + i}" for i in range(40)]
        counter += 40
        index.add(ids, ids, vectors)
        live.update(zip(ids, vectors, strict=True))
        for face_id in rng.choice(sorted(live), 25, replace=False):
            assert index.remove(str(face_id))
            del live[str(face_id)]
    assert index.kind == "hamming" and len(index) == len(live)
    for face_id, vector in live.items():
        assert index.search(vector, 1)[0].face_id == face_id


@pytest.mark.skipif(not ann_available(), reason="faiss (extra gallery-ann) is not installed")
def test_removing_a_subject_from_a_hamming_index_removes_all_its_faces_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    galleries = Galleries(open_store(db=str(tmp_path / "faces.db")), exact_limit=1, poll_s=None)
    galleries.start()
    galleries.create("g", 32)
    vectors = unit(rng.standard_normal((40, 32)))
    ids = galleries.enroll("g", [NewFace(f"s{i % 4}", v) for i, v in enumerate(vectors)])
    assert galleries.describe("g")["index"] == "hamming"
    removed = galleries.remove_subject("g", "s1")
    assert sorted(removed) == sorted(ids[1::4]) and galleries.describe("g")["faces"] == 30
    for i, vector in enumerate(vectors):  # removed faces are gone; every other face is still its own best match
        best = galleries.search("g", vector, 1)[0]
        assert best.subject != "s1" and (i % 4 == 1 or best.face_id == ids[i])
    galleries.stop()


def test_snapshot_in_chunks_reads_every_face_once_in_one_state(store_spec) -> None:
    """More faces than one chunk, in two galleries of different sizes: each face comes once, in
    chunks of at most the size asked; a write committed while the snapshot is open is not in it."""
    rng = np.random.default_rng(5)
    store, other = open_store(**store_spec), open_store(**store_spec)
    store.create_gallery(GalleryInfo("small", 8))
    store.create_gallery(GalleryInfo("wide", 16))
    added: dict[str, NewFace] = {}
    for batch in range(4):  # interleaved, so chunks mix the galleries
        for name, dim, count in (("small", 8, 3), ("wide", 16, 2)):
            faces = faces_of(rng, [f"{name}{batch}-{i}" for i in range(count)], dim)
            added.update(zip(store.add_faces(name, faces), faces, strict=True))
    last_seq = store.changes_since(0)[-1].seq
    try:
        for chunk_faces in (3, 4, 20, 21):  # 20 faces: a partial last chunk, exact multiples, one chunk
            with store.snapshot(chunk_faces=chunk_faces) as snap:
                chunks = [next(snap.chunks)]
                late = other.add_faces("small", faces_of(rng, ["late"]))  # committed mid-read
                chunks += list(snap.chunks)
            assert snap.seq == last_seq and snap.counts == {"small": 12, "wide": 8}
            assert [g.name for g in snap.galleries] == ["small", "wide"]
            assert all(1 <= len(c) <= chunk_faces for c in chunks)
            assert len(chunks) == -(-20 // chunk_faces)
            seen = [face for c in chunks for face in c]
            assert sorted(f.id for f in seen) == sorted(added)  # every face exactly once, no late one
            for face in seen:
                assert face.subject == added[face.id].subject
                np.testing.assert_array_equal(face.embedding, added[face.id].embedding)
            other.remove_face("small", late[0])
            last_seq = store.changes_since(0)[-1].seq
        with store.snapshot(chunk_faces=3) as snap:
            next(snap.chunks)
        with pytest.raises(RuntimeError, match="after the snapshot"):  # not silently empty
            next(snap.chunks)
        with pytest.raises(ValueError, match="chunk_faces"):
            with store.snapshot(chunk_faces=0):
                pass
    finally:
        other.close()
        store.close()
    galleries = Galleries(open_store(**store_spec), poll_s=None, snapshot_chunk=3)
    galleries.start()
    try:
        assert galleries.seq == last_seq
        assert galleries.describe("small")["faces"] == 12 and galleries.describe("wide")["faces"] == 8
        for face_id, face in added.items():
            name = "small" if face.subject.startswith("small") else "wide"
            assert galleries.search(name, face.embedding, 1)[0].face_id == face_id
    finally:
        galleries.stop()
