"""A PyTorch Dataset over scdl-fs shuffled minibatches, for DataLoader workers and DDP ranks.

Each item is one whole batch (the mount already shuffled and cut the epoch), so the DataLoader
runs with batch_size=None. Workers read different batches (DataLoader hands worker w the
indices it assigns); the daemon prefetches the next batches of every open, which all workers
share. With DDP each rank reads its own plan (`ranks=W,rank=I`): the ranks never share a row
and have equal batch counts. Call `set_epoch` before each epoch, as with DistributedSampler.

    python examples/torch_batches.py MNT NAME [--size 256] [--epochs 2] [--workers 4]
    torchrun --nproc-per-node 2 examples/torch_batches.py MNT NAME --ddp

The reading itself is examples/scdl_batches.py (numpy and scipy only; the tests run it).
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scdl_batches  # noqa: E402


def to_torch(m):
    """A scipy CSR matrix as a torch sparse CSR tensor (no copy of the values)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(m.indptr.astype("int64")),
        torch.from_numpy(m.indices.astype("int64")),
        torch.from_numpy(m.data),
        size=m.shape,
    )


class ScdlBatches(Dataset):
    """One epoch of one rank's batches; `set_epoch` moves to another permutation."""

    def __init__(self, mnt, name, size=256, seed=0, block=1, ranks=1, rank=0, fmt="npz"):
        self.args = dict(mnt=mnt, name=name, size=size, seed=seed, block=block, ranks=ranks, rank=rank, fmt=fmt)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.paths = scdl_batches.rank_batches(epoch=epoch, **self.args)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        m, row_ids, feature_block = scdl_batches.read_batch(self.paths[k])
        return to_torch(m), torch.from_numpy(row_ids), torch.from_numpy(feature_block)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mnt")
    ap.add_argument("name")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--ddp", action="store_true", help="under torchrun: one plan per rank")
    args = ap.parse_args()
    ranks, rank = 1, 0
    if args.ddp:
        dist.init_process_group("gloo")
        ranks, rank = dist.get_world_size(), dist.get_rank()
    data = ScdlBatches(args.mnt, args.name, size=args.size, block=args.block, ranks=ranks, rank=rank)
    for epoch in range(args.epochs):
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=args.workers)
        rows = 0
        for x, row_ids, _ in loader:
            rows += x.shape[0]  # a training step goes here
        print(f"rank {rank}/{ranks} epoch {epoch}: {len(data)} batches, {rows} rows")
    if args.ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
