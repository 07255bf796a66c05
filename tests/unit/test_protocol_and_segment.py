import os

import numpy as np
import pytest

from gpu_pool import protocol, segment
from gpu_pool.protocol import Done, ErrorCode, Failed, Job, Kind
from gpu_pool.segment import Layout, Segment


def test_messages_round_trip_and_stay_atomic_sized():
    job = Job(2**40 + 7, 3, "bgem3-123-456-789012", 256, 8192 * 256, Kind.DENSE | Kind.COLBERT)
    for message in (job, Done(5), Failed(6, ErrorCode.OUT_OF_MEMORY, "out of memory")):
        data = protocol.encode(message)
        assert len(data) + 4 <= protocol.PIPE_BUF
        assert protocol.decode(data) == message


def test_oversized_message_is_refused():
    with pytest.raises(ValueError):
        protocol.encode(Failed(1, ErrorCode.FORWARD_FAILED, "x" * 5000))


def test_layout_has_only_requested_regions_aligned():
    layout = Layout(n_inputs=3, n_tokens=10, dim=8, kinds=Kind.SPARSE | Kind.COLBERT)
    regions = layout.regions()
    assert set(regions) == {"lengths", "ids", "sparse", "colbert"}
    assert regions["colbert"][1] == (7, 8)
    assert all(offset % 64 == 0 for offset, _, _ in regions.values())


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
