"""Peak live memory by tracking storages: what counts, what does not, and that it is the peak."""

import math

import torch

from course_lib.memory import track_live_memory

MB = 1 << 20


def test_a_temporary_counts_at_its_peak_and_is_freed():
    x = torch.randn(256, 1024)  # 1 MiB, made before the block: not counted
    with track_live_memory() as memory:
        y = x * 2.0  # 1 MiB
        z = y.exp()  # 1 MiB more: peak 2 MiB
        del y
        w = z + 1.0  # y freed: back to 2 MiB
    assert memory.peak_bytes == 2 * MB
    assert memory.live_bytes == 2 * MB  # z and w are still alive
    del z, w


def test_a_list_of_tiles_counts_as_much_as_one_tensor():
    q = torch.randn(1024, 64)
    with torch.no_grad(), track_live_memory() as tiled:
        tiles = [q[i:i + 128] @ q.T for i in range(0, 1024, 128)]  # eight (128, 1024) tiles kept
        del tiles
    with torch.no_grad(), track_live_memory() as dense:
        scores = q @ q.T  # one (1024, 1024)
        del scores
    assert tiled.peak_bytes == dense.peak_bytes == 1024 * 1024 * 4


def test_views_and_in_place_changes_of_the_inputs_add_nothing():
    x = torch.randn(1024, 1024)
    with track_live_memory() as memory:
        x.add_(1.0)
        x.T.contiguous().mul_(0)  # the copy counts, its in-place change does not count twice
        x[:10].view(-1)
    assert memory.peak_bytes == 4 * MB


def test_tensors_saved_for_the_backward_stay_counted_until_the_graph_goes():
    x = torch.randn(256, 1024, requires_grad=True)
    with track_live_memory() as memory:
        loss = x.exp().sum()  # exp's output is saved for the backward: 1 MiB alive
        assert memory.live_bytes >= MB
        loss.backward()
    del loss
    assert memory.live_bytes == MB  # exp's output went with the graph; x.grad, made inside, stays
    assert math.isclose(x.grad.sum().item(), x.detach().exp().sum().item(), rel_tol=1e-4)
