"""The local runner's link: arrays of any size, dtype and shape through reused shared-memory slots."""

from __future__ import annotations

import glob
import multiprocessing
import os
import uuid

import numpy as np
import pytest

from graphopt.partition.shared_ring import SHM_DIR, RingReader, RingWriter, remove_blocks


@pytest.fixture()
def link():
    """A writer and a reader joined by the two pipes of a link, in this process; cleaned up after."""
    prefix = f"graphopt_test_{uuid.uuid4().hex[:8]}_"
    data_reader, data_writer = multiprocessing.Pipe(duplex=False)
    freed_reader, freed_writer = multiprocessing.Pipe(duplex=False)
    writer = RingWriter(data_writer, freed_reader, slots=2, name=f"{prefix}1")
    reader = RingReader(data_reader, freed_writer)
    yield writer, reader, prefix
    for end in (data_reader, data_writer, freed_reader, freed_writer):
        end.close()
    remove_blocks(prefix)
    assert not glob.glob(os.path.join(SHM_DIR, prefix + "*"))


def _through(writer, reader, seq, arrays):
    assert writer.slot_ready(timeout=1)
    writer.write(seq, arrays)
    assert reader.data.poll(1)
    kind, got_seq, got = reader.take()
    assert (kind, got_seq) == ("data", seq)
    return got


def _assert_same(got, sent):
    assert list(got) == list(sent)
    for name, array in sent.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)


def test_big_small_empty_and_scalar_arrays_arrive_equal_as_read_only_views(link):
    writer, reader, _ = link
    rng = np.random.default_rng(0)
    sent = {
        "big": rng.standard_normal((1, 3, 640, 640)).astype(np.float32),  # 4.9 MB
        "small": np.arange(3, dtype=np.int64),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(7.5, np.float64),
    }
    got = _through(writer, reader, 0, sent)
    _assert_same(got, sent)
    assert not got["big"].flags.writeable and not got["big"].flags.owndata  # a view of the slot, not a copy
    assert got["big"].ctypes.data % 64 == 0 and got["small"].ctypes.data % 64 == 0
    reader.release()


def test_odd_dtypes_and_non_contiguous_arrays(link):
    writer, reader, _ = link
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    sent = {
        "bool": np.array([[True, False], [False, True]]),
        "f16": np.linspace(-2, 2, 9, dtype=np.float16),
        "i8": np.array([-128, 0, 127], np.int8),
        "u64": np.array([2**64 - 1, 0], np.uint64),
        "c64": np.array([1 + 2j, -3j], np.complex64),
        "big_endian": np.array([1.5, -2.25], dtype=">f8"),
        "strided": base[:, ::2],  # not contiguous: written through copyto, read back contiguous
        "transposed": base.T,
        "strings": np.array(["a", "longer text", ""], dtype=object),  # pickled into the slot
    }
    got = _through(writer, reader, 0, sent)
    _assert_same(got, sent)
    assert got["strided"].flags.c_contiguous
    assert got["strings"].tolist() == ["a", "longer text", ""]
    reader.release()


def test_shapes_that_change_between_samples_grow_the_slot_and_stay_exact(link):
    writer, reader, prefix = link
    rng = np.random.default_rng(1)
    for seq, side in enumerate([8, 64, 16, 512, 32, 512, 8]):  # grows twice, shrinks, grows back
        sent = {"x": rng.standard_normal((1, 3, side, side)).astype(np.float32), "n": np.array([side])}
        _assert_same(_through(writer, reader, seq, sent), sent)
        reader.release()
    blocks = glob.glob(os.path.join(SHM_DIR, prefix + "*"))
    assert len(blocks) == 2  # one live block per slot: a replaced block was unlinked


def test_a_slot_is_reused_only_after_the_reader_gives_it_back(link):
    writer, reader, _ = link
    for seq in range(2):
        assert writer.slot_ready()
        writer.write(seq, {"x": np.full(100_000, seq, np.float32)})
    assert not writer.slot_ready(timeout=0.05)  # both slots are the reader's
    with pytest.raises(RuntimeError, match="without a free slot"):
        writer.write(2, {"x": np.zeros(1, np.float32)})
    assert reader.data.poll(1)
    first = reader.take()[2]["x"]
    assert first[0] == 0
    reader.release()
    assert writer.slot_ready(timeout=1)
    writer.write(2, {"x": np.full(100_000, 2, np.float32)})  # into the slot just given back
    second = reader.take()
    assert second[1] == 1 and second[2]["x"][0] == 1  # in order: the second sample is untouched
    reader.release()
    assert reader.take()[2]["x"][0] == 2


def test_markers_arrive_in_order_after_the_samples(link):
    writer, reader, _ = link
    assert writer.slot_ready()
    writer.write(0, {"x": np.ones(3, np.float32)})
    writer.send_marker(("end", 1, []))
    assert reader.take()[0] == "data"
    reader.release()
    assert reader.take() == ("end", 1, [])


def test_release_after_the_writer_is_gone_is_harmless(link):
    writer, reader, _ = link
    assert writer.slot_ready()
    writer.write(0, {"x": np.ones(3, np.float32)})
    reader.take()
    writer.freed.close()  # the writer's process ended
    reader.release()
