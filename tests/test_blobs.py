import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messaging import blobs
from messaging.blobs import (
    ABYTES,
    CHUNK_SIZE,
    HEADER_SIZE,
    BlobCorrupt,
    BlobWriter,
    ciphertext_size,
    iter_file,
    iter_plaintext,
    new_file_key,
    verify,
)

SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5]
ODD_PIECES = [1, 7, 4093, CHUNK_SIZE + 3, 2 * CHUNK_SIZE + 11, 65]


def plaintext(size: int) -> bytes:
    # deterministic, non-repeating within a chunk, so a misplaced chunk shows up as a mismatch
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def write_blob(directory: Path, data: bytes, *, name: str = "blob", key: bytes | None = None):
    """Write `data` through a BlobWriter in odd-sized pieces; returns (path, info)."""
    path = directory / name
    with BlobWriter(directory, key=key) as writer:
        offset, turn = 0, 0
        while offset < len(data):
            piece = ODD_PIECES[turn % len(ODD_PIECES)]
            writer.write(data[offset : offset + piece])
            offset += piece
            turn += 1
        info = writer.finish(path)
    return path, info


def read_all(path: Path, key: bytes, **kwargs) -> bytes:
    return b"".join(iter_plaintext(path, key, **kwargs))


def rewrite(path: Path, transform) -> None:
    path.write_bytes(transform(path.read_bytes()))


@pytest.fixture(scope="module")
def big_blob(tmp_path_factory):
    directory = tmp_path_factory.mktemp("big")
    data = plaintext(3 * CHUNK_SIZE + 5)
    path, info = write_blob(directory, data)
    return path, info, data


@pytest.mark.parametrize("size", SIZES)
def test_it_round_trips_a_file_written_in_odd_pieces(tmp_path, size):
    data = plaintext(size)
    path, info = write_blob(tmp_path, data)

    assert read_all(path, info.key) == data
    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    verify(path, info.key, size=size, sha256=info.sha256)


@pytest.mark.parametrize("size", SIZES)
def test_ciphertext_size_matches_the_file_on_disk(tmp_path, size):
    path, info = write_blob(tmp_path, plaintext(size))

    assert path.stat().st_size == ciphertext_size(size) == info.ciphertext_size


def test_ciphertext_size_counts_one_tag_per_chunk_and_one_for_an_empty_file():
    assert ciphertext_size(0) == HEADER_SIZE + ABYTES
    assert ciphertext_size(CHUNK_SIZE) == HEADER_SIZE + CHUNK_SIZE + ABYTES
    assert ciphertext_size(CHUNK_SIZE + 1) == HEADER_SIZE + CHUNK_SIZE + 1 + 2 * ABYTES


def test_the_key_is_32_random_bytes_and_each_file_gets_its_own():
    assert len(new_file_key()) == 32
    assert new_file_key() != new_file_key()


def test_a_given_key_is_used_and_a_short_one_is_refused(tmp_path):
    key = new_file_key()
    path, info = write_blob(tmp_path, b"hello", key=key)

    assert info.key == key
    assert read_all(path, key) == b"hello"
    with pytest.raises(ValueError):
        BlobWriter(tmp_path, key=b"short")


def test_the_key_stays_out_of_the_repr(tmp_path):
    _, info = write_blob(tmp_path, b"hello")

    assert info.key.hex() not in repr(info)
    assert repr(info.key) not in repr(info)


def test_the_writer_never_holds_more_than_one_chunk(tmp_path):
    with BlobWriter(tmp_path) as writer:
        for piece in [1, CHUNK_SIZE, 3 * CHUNK_SIZE + 7, 5, CHUNK_SIZE - 6, 0, 2]:
            writer.write(b"x" * piece)
            assert writer.buffered <= CHUNK_SIZE
        assert writer.size == 5 * CHUNK_SIZE + 9
        writer.finish(tmp_path / "blob")
    assert writer.buffered == 0


def test_the_writer_accepts_bytearray_and_memoryview(tmp_path):
    path = tmp_path / "blob"
    with BlobWriter(tmp_path) as writer:
        writer.write(bytearray(b"ab"))
        writer.write(memoryview(b"cd"))
        info = writer.finish(path)

    assert read_all(path, info.key) == b"abcd"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 0),
        (0, 1),
        (5, 5),
        (CHUNK_SIZE - 1, CHUNK_SIZE + 1),
        (CHUNK_SIZE, 2 * CHUNK_SIZE),
        (2 * CHUNK_SIZE + 17, None),
        (3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 5),
        (3 * CHUNK_SIZE + 4, None),
        (3 * CHUNK_SIZE + 5, None),
        (10, 10**9),
        (10**9, None),
    ],
)
def test_a_range_read_gives_exactly_the_slice(big_blob, start, end):
    path, info, data = big_blob

    assert read_all(path, info.key, start=start, end=end) == data[start:end]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.integers(min_value=0, max_value=3 * CHUNK_SIZE + 10),
    length=st.one_of(st.none(), st.integers(min_value=0, max_value=2 * CHUNK_SIZE)),
    piece=st.integers(min_value=1, max_value=CHUNK_SIZE + 1),
)
def test_any_range_read_gives_exactly_the_slice(big_blob, start, length, piece):
    path, info, data = big_blob
    end = None if length is None else start + length

    pieces = list(iter_plaintext(path, info.key, start=start, end=end, chunk_size=piece))

    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(p) <= piece for p in pieces)


def test_a_prefix_read_stops_before_a_damaged_later_chunk(tmp_path):
    data = plaintext(3 * CHUNK_SIZE)
    path, info = write_blob(tmp_path, data)
    rewrite(path, lambda b: b[:-1] + bytes([b[-1] ^ 1]))

    # documented: bytes past `end` are not checked, which is why delivery runs verify()
    assert read_all(path, info.key, end=CHUNK_SIZE) == data[:CHUNK_SIZE]
    with pytest.raises(BlobCorrupt):
        read_all(path, info.key)


def flip_positions(size: int) -> list[int]:
    total = ciphertext_size(size)
    return sorted(
        {0, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, total // 2, total - ABYTES, total - 1}
    )


@pytest.mark.parametrize("position", flip_positions(3 * CHUNK_SIZE + 5))
def test_a_flipped_byte_anywhere_is_caught_by_verify(tmp_path, position):
    data = plaintext(3 * CHUNK_SIZE + 5)
    path, info = write_blob(tmp_path, data)
    rewrite(path, lambda b: b[:position] + bytes([b[position] ^ 0x40]) + b[position + 1 :])

    with pytest.raises(BlobCorrupt) as caught:
        verify(path, info.key, size=info.size, sha256=info.sha256)
    assert caught.value.reason == "tampered"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_flipped_bit_at_a_random_place_is_caught(tmp_path, data):
    plain = plaintext(CHUNK_SIZE + 100)
    path, info = write_blob(tmp_path, plain)
    position = data.draw(st.integers(min_value=0, max_value=info.ciphertext_size - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    rewrite(path, lambda b: b[:position] + bytes([b[position] ^ (1 << bit)]) + b[position + 1 :])

    with pytest.raises(BlobCorrupt):
        verify(path, info.key, size=info.size, sha256=info.sha256)


def test_a_file_without_its_final_chunk_is_truncated(tmp_path):
    path, info = write_blob(tmp_path, plaintext(3 * CHUNK_SIZE + 5))
    rewrite(path, lambda b: b[: HEADER_SIZE + 3 * (CHUNK_SIZE + ABYTES)])

    with pytest.raises(BlobCorrupt) as caught:
        read_all(path, info.key)
    assert caught.value.reason == "truncated"
    with pytest.raises(BlobCorrupt) as caught:
        verify(path, info.key, size=info.size, sha256=info.sha256)
    assert caught.value.reason == "length"


@pytest.mark.parametrize("keep", [HEADER_SIZE + 10, HEADER_SIZE + CHUNK_SIZE, -1])
def test_a_file_cut_mid_chunk_is_refused(tmp_path, keep):
    path, info = write_blob(tmp_path, plaintext(2 * CHUNK_SIZE + 5))
    rewrite(path, lambda b: b[:keep])

    with pytest.raises(BlobCorrupt):
        read_all(path, info.key)


def test_a_file_cut_inside_the_header_is_refused(tmp_path):
    path, info = write_blob(tmp_path, b"hello")
    rewrite(path, lambda b: b[:10])

    with pytest.raises(BlobCorrupt) as caught:
        read_all(path, info.key)
    assert caught.value.reason == "bad_header"


def test_a_header_alone_is_truncated(tmp_path):
    path, info = write_blob(tmp_path, b"")
    rewrite(path, lambda b: b[:HEADER_SIZE])

    with pytest.raises(BlobCorrupt) as caught:
        read_all(path, info.key)
    assert caught.value.reason == "truncated"


@pytest.mark.parametrize("size", [0, 10, CHUNK_SIZE, 2 * CHUNK_SIZE - 1])
@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * (CHUNK_SIZE + ABYTES), "copy"])
def test_bytes_after_the_final_chunk_are_refused(tmp_path, size, extra):
    path, info = write_blob(tmp_path, plaintext(size))
    rewrite(path, lambda b: b + (b[HEADER_SIZE:] if extra == "copy" else extra))

    with pytest.raises(BlobCorrupt):
        read_all(path, info.key)
    with pytest.raises(BlobCorrupt) as caught:
        verify(path, info.key, size=info.size, sha256=info.sha256)
    assert caught.value.reason == "length"


def test_bytes_after_a_full_final_chunk_are_reported_as_trailing(tmp_path):
    # a short final chunk swallows what follows and fails authentication instead
    path, info = write_blob(tmp_path, plaintext(CHUNK_SIZE))
    rewrite(path, lambda b: b + b"\x00")

    with pytest.raises(BlobCorrupt) as caught:
        read_all(path, info.key)
    assert caught.value.reason == "trailing_bytes"


def test_swapped_chunks_are_refused(tmp_path):
    path, info = write_blob(tmp_path, plaintext(2 * CHUNK_SIZE + 5))
    sealed = CHUNK_SIZE + ABYTES

    def swap(b: bytes) -> bytes:
        first, second = b[HEADER_SIZE : HEADER_SIZE + sealed], b[HEADER_SIZE + sealed :][:sealed]
        return b[:HEADER_SIZE] + second + first + b[HEADER_SIZE + 2 * sealed :]

    rewrite(path, swap)

    with pytest.raises(BlobCorrupt):
        verify(path, info.key, size=info.size, sha256=info.sha256)


def test_the_wrong_key_is_refused(tmp_path):
    path, info = write_blob(tmp_path, plaintext(100))

    with pytest.raises(BlobCorrupt) as caught:
        read_all(path, new_file_key())
    assert caught.value.reason == "tampered"
    with pytest.raises(BlobCorrupt):
        verify(path, new_file_key(), size=info.size, sha256=info.sha256)


def test_verify_refuses_a_size_or_hash_the_envelope_did_not_promise(tmp_path):
    path, info = write_blob(tmp_path, plaintext(100))

    with pytest.raises(BlobCorrupt) as caught:
        verify(path, info.key, size=101, sha256=info.sha256)
    assert caught.value.reason == "length"
    with pytest.raises(BlobCorrupt) as caught:
        verify(path, info.key, size=100, sha256=hashlib.sha256(b"other").hexdigest())
    assert caught.value.reason == "hash"


def test_verify_accepts_an_uppercase_hash(tmp_path):
    path, info = write_blob(tmp_path, plaintext(100))

    verify(path, info.key, size=100, sha256=info.sha256.upper())


def test_a_blob_from_another_file_key_pair_does_not_verify_as_this_one(tmp_path):
    _, info_a = write_blob(tmp_path, plaintext(100), name="a")
    path_b, _ = write_blob(tmp_path, plaintext(100)[::-1], name="b")

    with pytest.raises(BlobCorrupt):
        verify(path_b, info_a.key, size=100, sha256=info_a.sha256)


def test_finish_renames_into_place_with_mode_0600(tmp_path):
    path, _ = write_blob(tmp_path, b"hello")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_the_writer_creates_a_missing_directory(tmp_path):
    directory = tmp_path / "a" / "b"
    path, info = write_blob(directory, b"hello")

    assert read_all(path, info.key) == b"hello"


def test_the_temp_file_is_private_while_writing(tmp_path):
    with BlobWriter(tmp_path) as writer:
        writer.write(b"secret")
        (temp,) = tmp_path.iterdir()
        assert stat.S_IMODE(temp.stat().st_mode) == 0o600


def test_abort_leaves_no_file_behind(tmp_path):
    writer = BlobWriter(tmp_path)
    writer.write(plaintext(2 * CHUNK_SIZE))
    writer.abort()
    writer.abort()

    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_leaving_the_block_with_an_exception_leaves_no_file_behind(tmp_path):
    with pytest.raises(RuntimeError), BlobWriter(tmp_path) as writer:
        writer.write(b"partial")
        raise RuntimeError("upload cut")

    assert list(tmp_path.iterdir()) == []


def test_leaving_the_block_without_finish_leaves_no_file_behind(tmp_path):
    with BlobWriter(tmp_path) as writer:
        writer.write(b"partial")

    assert list(tmp_path.iterdir()) == []


def test_abort_after_finish_keeps_the_finished_file(tmp_path):
    path, info = write_blob(tmp_path, b"hello")
    writer = BlobWriter(tmp_path)
    writer.write(b"x")
    writer.finish(tmp_path / "second")
    writer.abort()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "second"]
    assert read_all(path, info.key) == b"hello"


def test_a_failed_rename_cleans_up(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(blobs.os, "replace", refuse)
    with BlobWriter(tmp_path) as writer:
        writer.write(b"hello")
        with pytest.raises(OSError):
            writer.finish(tmp_path / "blob")

    assert list(tmp_path.iterdir()) == []


def test_finish_twice_is_refused(tmp_path):
    with BlobWriter(tmp_path) as writer:
        writer.finish(tmp_path / "blob")
        with pytest.raises(ValueError):
            writer.finish(tmp_path / "again")


@pytest.mark.parametrize(
    ("start", "end", "chunk"),
    [(0, None, 7), (0, 0, 7), (3, 10, 4), (95, None, 64), (50, 10**6, 1000), (200, None, 16)],
)
def test_iter_file_reads_a_raw_byte_range(tmp_path, start, end, chunk):
    path = tmp_path / "raw"
    data = os.urandom(100)
    path.write_bytes(data)

    pieces = list(iter_file(path, start=start, end=end, chunk=chunk))

    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(p) <= chunk for p in pieces)


def test_ciphertext_ranges_reassemble_into_a_verifiable_blob(tmp_path, big_blob):
    path, info, data = big_blob
    copy = tmp_path / "copy"
    cut = info.ciphertext_size // 3
    with copy.open("wb") as out:
        for start, end in [(0, cut), (cut, 2 * cut), (2 * cut, None)]:
            for piece in iter_file(path, start=start, end=end):
                out.write(piece)

    verify(copy, info.key, size=info.size, sha256=info.sha256)
    assert read_all(copy, info.key) == data
