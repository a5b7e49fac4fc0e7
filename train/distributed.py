"""Data-parallel training under torchrun: every stage, N processes (GPUs or CPU cores), one global batch.

    torchrun --nproc-per-node 4 $(which cirn-train) all-stages ...     # gloo on CPU, NCCL on GPUs
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 $(which cirn-train) stage2 ...

run.batch_size is the *global* batch: each of the N processes draws its 1/N share of the same stream of samples
(datasets.InfiniteLoader), so the samples of an iteration, the learning-rate schedule and the seed are those of a
single-process run with that batch. Gradients are averaged over the processes before every optimiser step
(`average_gradients`, a bucketed all-reduce), which is the update of one process on the whole batch. To train a
larger global batch, raise run.batch_size and scale optim.lr (and optim.d_lr) by the same factor (the linear
scaling rule, Goyal et al. 2017), with a few hundred iterations of optim.warmup.

We all-reduce explicitly instead of wrapping the networks in DistributedDataParallel: the stages run several
forward/backward passes per step through networks that are frozen in some of them (stage 2's discriminator, stage
1's two), which DDP's reducer supports only with find_unused_parameters and a reduction per backward pass; one
all-reduce per optimiser step is the same arithmetic. BatchNorm layers that train (the tiny and MobileNet models)
keep per-process batch statistics, as under DDP without SyncBatchNorm: the one difference from a single process
(the paper's DeepLab-v2 freezes its BatchNorm, so it trains exactly as one process would). Process 0 alone logs,
evaluates, writes checkpoints and the files that later steps read (`on_main`); the others wait for it. The run
folder must be on a filesystem every node sees. Stage 1's history pools of generated images are per process and the
checkpoint keeps process 0's: a resumed multi-process stage 1 restarts the other processes' pools from it.
"""
import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from cirn.common.errors import CirnError

BUCKET_BYTES = 32 * 2**20  # gradients are all-reduced in flat buckets of about this size
TIMEOUT = timedelta(hours=2)  # process 0 may evaluate or write pseudo labels for a long while between steps


def init():
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op for a single process.

    gloo serves CPU tensors and NCCL CUDA ones, so run.device=cpu also works on a machine with GPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        if local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:
        raise CirnError(f"could not join the torchrun process group ({backend}): {err}; check --rdzv-endpoint "
                        "and that every node can reach it") from None
    atexit.register(_leave)


def _leave():
    if dist.is_initialized():
        dist.destroy_process_group()


def enabled():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size():
    return dist.get_world_size() if enabled() else 1


def rank():
    return dist.get_rank() if enabled() else 0


def local_rank():
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main():
    return rank() == 0


def barrier():
    if enabled():
        dist.barrier()


def shard_batch(batch_size):
    """This process's share of a global batch of `batch_size` samples."""
    n = world_size()
    if batch_size % n:
        raise CirnError(f"run.batch_size={batch_size} (the global batch) does not split over {n} processes: use a "
                        f"multiple of {n}")
    return batch_size // n


def _buckets(tensors):
    """Consecutive runs of tensors of one dtype and device, about BUCKET_BYTES each."""
    bucket, size = [], 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (t.dtype != bucket[0].dtype or t.device != bucket[0].device or size + nbytes > BUCKET_BYTES):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def average_gradients(*modules):
    """Replace every gradient of `modules` by its mean over the processes; a no-op for a single process.

    Every process runs the same step, so all hold gradients for the same parameters in the same order."""
    if not enabled():
        return
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    for bucket in _buckets(grads):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def mean_losses(losses):
    """The mean over the processes of each float in `losses` (so logs and the NaN check see the global batch)."""
    if not enabled():
        return losses
    keys = sorted(losses)
    values = torch.tensor([float(losses[k]) for k in keys], dtype=torch.float64)  # a CPU tensor: through gloo
    dist.all_reduce(values)
    return dict(zip(keys, (values / world_size()).tolist()))


def global_count(count):
    """The mean over the processes of a per-process count (a tensor of any shape): the divisor that makes
    per-process means average to the mean over the global batch, or a class-count vector of the global batch. The
    count itself for a single process."""
    if not enabled():
        return count
    total = count.detach().to(torch.float64).reshape(-1).clone()
    dist.all_reduce(total)
    return (total / world_size()).to(count.dtype if count.is_floating_point() else torch.float32).reshape(count.shape)


def main_decides(value):
    """Process 0's `value` on every process (a flag read from the run folder, which may look different elsewhere
    on a network filesystem: every process must take the same branch)."""
    if not enabled():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(write, read_back):
    """Process 0 runs write() (files other processes need); the others wait for it, then return read_back()."""
    if not enabled():
        return write()
    result = write() if is_main() else None
    barrier()
    return result if is_main() else read_back()
