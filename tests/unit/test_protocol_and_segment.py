import os

import numpy as np
import pytest

from gpu_pool.wire import protocol, segment
from gpu_pool.wire.protocol import Cancel, Done, ErrorCode, Failed, Job, Kind, Lane, ScoreJob, Stop
from gpu_pool.wire.segment import Layout, Segment


def test_messages_round_trip_and_stay_atomic_sized():
    job = Job(2**40 + 7, 3, "bgem3-123-456-789012", 256, 8192 * 256, Kind.DENSE | Kind.COLBERT)
    for message in (job, Done(tuple(range(10**12, 10**12 + 256))), Failed(6, ErrorCode.OUT_OF_MEMORY, "out of memory")):
        data = protocol.encode(message)
        assert len(data) + 4 <= protocol.PIPE_BUF
        assert protocol.decode(data) == message


def test_every_message_comes_back_whole_with_its_enums():
    messages = [
        Job(1, 0, "a", 1, 3, Kind.DENSE | Kind.HALF, lane=Lane.INTERACTIVE, deadline=12.5),
        ScoreJob(2, 1, "b", 2, 9, protocol.SCORE_KINDS, weights=(0.4, 0.2, 0.4), unused_ids=(0, 1, 2)),
        Done((3, 4)), Failed(5, ErrorCode.GONE, "stopping"), Cancel(6), Stop(),
    ]
    for message in messages:
        back = protocol.decode(protocol.encode(message))
        assert back == message and type(back) is type(message)
        for name in ("kinds", "lane", "code"):
            if hasattr(message, name):
                assert type(getattr(back, name)) is type(getattr(message, name)), name
    assert b"Kind" not in protocol.encode(messages[0]), "enums cross as their values"


def test_oversized_message_is_refused():
    with pytest.raises(ValueError):
        protocol.encode(Failed(1, ErrorCode.FORWARD_FAILED, "x" * 5000))


def test_layout_has_only_requested_regions_aligned():
    layout = Layout(n_inputs=3, n_tokens=10, dim=8, kinds=Kind.SPARSE | Kind.COLBERT)
    regions = layout.regions()
    assert set(regions) == {"lengths", "ids", "times", "sparse", "colbert"}
    assert regions["colbert"][1] == (7, 8)
    assert all(offset % 64 == 0 for offset, _, _ in regions.values())


def test_half_layouts_hold_dense_and_colbert_in_float16():
    full = Layout(n_inputs=3, n_tokens=100, dim=64, kinds=Kind.DENSE | Kind.SPARSE | Kind.COLBERT)
    half = Layout(n_inputs=3, n_tokens=100, dim=64, kinds=full.kinds | Kind.HALF)
    types = {name: dtype for name, (_, _, dtype) in half.regions().items()}
    assert types == {"lengths": np.int32, "ids": np.int32, "times": np.float64, "dense": np.float16,
                     "sparse": np.float32, "colbert": np.float16}
    vectors = (3 + 97) * 64  # dense rows, then ColBERT rows
    assert full.size() - half.size() >= vectors * 2 - 2 * 64  # two bytes fewer a number, within alignment
    assert all(offset % 64 == 0 for offset, _, _ in half.regions().values())


def test_owner_creates_and_unlinks_attacher_shares_memory():
    name = f"bgem3-test-{os.getpid()}-1"
    layout = Layout(2, 5, 4, Kind.DENSE)
    owner = Segment.create(name, layout)
    owner.arrays["ids"][:] = np.arange(5)
    other = Segment.attach(name, layout)
    other.arrays["dense"][1] = 7.0
    assert list(other.arrays["ids"]) == [0, 1, 2, 3, 4]
    other.close()
    assert os.path.exists(f"/dev/shm/{name}")
    assert (owner.arrays["dense"][1] == 7.0).all()
    owner.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    with pytest.raises(FileNotFoundError):
        Segment.attach(name, layout)


def test_unlink_prefix_removes_leftovers():
    prefix = f"bgem3-test-{os.getpid()}-leak-"
    for i in range(3):
        Segment.create(f"{prefix}{i}", Layout(1, 2, 4, Kind.DENSE))  # never closed: a crash
    assert segment.unlink_prefix(prefix) == 3
    assert segment.unlink_prefix(prefix) == 0


def test_frame_reader_splits_many_messages_and_keeps_partial_ones():
    import multiprocessing

    from gpu_pool.wire.frames import FrameReader

    reader_end, writer_end = multiprocessing.Pipe(duplex=False)
    reader = FrameReader(reader_end)
    assert reader.read(0.01) == []
    for i in range(5):
        writer_end.send_bytes(protocol.encode(Done((i,))))
    os.write(writer_end.fileno(), b"\x00\x00\x00\x05ab")  # a frame whose tail is not there yet
    frames = reader.read(0.1)
    assert [protocol.decode(f) for f in frames] == [Done((i,)) for i in range(5)]
    os.write(writer_end.fileno(), b"cde")
    assert reader.read(0.1) == [b"abcde"]
    writer_end.close()
    with pytest.raises(EOFError):
        reader.read(0.1)
