"""The DDP path: two gloo processes on the CPU train one model (torchrun's environment)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.distributed import device_for, init_distributed, shutdown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from tests.train.conftest import tiny_cases
    from train.fit import fit
    from train.recipe import SMOKE

    world = init_distributed("cpu")
    try:
        cases = tiny_cases(4)
        result = fit(SMOKE.replace(steps_per_epoch=3), cases, out_dir, device=device_for(world, "cpu"), world=world,
                     progress=False)
        flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        queue.put((rank, world.backend, world.world_size, bool(torch.equal(gathered[0], gathered[1])),
                   result.history[-1]["loss"], result.steps))
    finally:
        shutdown(world)


def test_two_gloo_processes_train_one_model(tmp_path):
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), queue), nprocs=2, join=True,
                       start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    assert [r[0] for r in results] == [0, 1]
    for rank, backend, world_size, in_sync, loss, steps in results:
        assert backend == "gloo" and world_size == 2
        assert in_sync, f"rank {rank}: parameters differ between the processes after training"
        assert steps == 3
    assert results[0][4] == results[1][4]  # the epoch loss is averaged over the processes
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "recipe.json").exists()
