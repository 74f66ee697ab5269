"""DistributedDataParallel on 2 CPU processes (gloo): the ranks stay bit-identical, and they equal one process
accumulating the same micro-batches, i.e. DDP averages exactly the gradients the definition says it should."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from sg2v.training.checkpoint import load_checkpoint
from sg2v.training.train import TrainConfig, read_metrics, train

STEPS, BATCH = 3, 4


def _settings(out: Path, grad_accum: int = 1, batch: int = BATCH) -> TrainConfig:
    return TrainConfig(steps=STEPS, batch=batch, grad_accum=grad_accum, lr=3e-3, warmup=1, ckpt_every=STEPS,
                       eval_every=0, log_every=1, workers=0, threads=1, seed=9, out=str(out))


def _store() -> td.TCPStore:
    """The rendezvous store, as torchrun's agent holds it: bound to a port the OS picks and kept open, so no
    other process can take the port between choosing it and the ranks' rendezvous (a probe-then-release free
    port can be taken in between)."""
    return td.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # TORCHELASTIC_USE_AGENT_STORE: env:// rendezvous joins the store at MASTER_PORT as a client (torchrun's
    # way), so rank 0 does not bind the port itself; train() still creates and destroys the process group.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), TORCHELASTIC_USE_AGENT_STORE="True")
    res = train(_settings(Path(out) / "run"), progress=False)
    assert not td.is_initialized()  # train() tears down the group it created
    torch.save({"model": res.model.state_dict(), "ema": res.ema.state_dict(), "losses": res.losses},
               Path(out) / f"rank{rank}.pt")


def test_two_gloo_ranks_stay_in_sync_and_match_accumulation(tmp_path):
    if not td.is_available() or not td.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = _store()
        mp.spawn(_worker, args=(2, store.port, str(tmp_path)), nprocs=2, join=True)
        del store
        # Reference: one process, 2 micro-batches per step = the 2 ranks' shares, same seeds.
        ref = train(_settings(tmp_path / "ref", grad_accum=2), progress=False)
        # Control: one process seeing only rank 0's share; DDP must differ from it, else the check is blind.
        half = train(_settings(tmp_path / "half", batch=BATCH // 2), progress=False)
    finally:
        torch.set_num_threads(n)

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("model", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)  # bit-identical replicas

    from sg2v.models.sg2v import build_model

    torch.manual_seed(_settings(tmp_path).seed)  # train() builds its initial weights right after this seeding
    init = build_model(_settings(tmp_path).model_config()).state_dict()

    def dist(a: dict, b: dict) -> float:
        return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in init)))

    moved = dist(r0["model"], init)
    off_ref = dist(r0["model"], ref.model.state_dict()) / moved
    off_half = dist(r0["model"], half.model.state_dict()) / moved
    # Same mean gradient up to summation order (Adam can amplify rounding only on near-zero gradients).
    assert moved > 1e-3 and off_ref < 1e-3, (moved, off_ref)
    assert off_half > 0.05, off_half  # a different mean gradient is visibly different
    assert r0["losses"] == r1["losses"]  # logged loss is all-reduced over ranks
    assert r0["losses"] == pytest.approx(ref.losses, rel=1e-5)

    # Only rank 0 wrote: one checkpoint, one log with one record per step.
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["last.pt", "metrics.jsonl"]
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
    ck = load_checkpoint(run / "last.pt")
    assert ck["step"] == STEPS
    for k in ck["model"]:
        assert torch.equal(ck["model"][k], r0["model"][k]), k
