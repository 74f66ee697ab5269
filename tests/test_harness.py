"""The training harness (sg2v.training.harness) against a plain reference loop on a small regression: the
same weights, EMA, learning rates and logged losses; the checkpoint and evaluation cadence; the NaN stop
before a checkpoint of diverged weights; --stop-at."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from sg2v.training.harness import Dist, Ema, Harness, LoopPlan, cosine_lr, step_seed, update_ema

DIM, BATCH = 5, 8


class Regression:
    """A harness objective: least squares on fresh seeded batches, each micro-batch drawn from its index."""

    def __init__(self, model: torch.nn.Module, micro: int, nan_at: int = 0):
        self.model, self.micro, self.nan_at = model, micro, nan_at
        self.checkpoint = "mem"
        self.saved: list[int] = []
        self.records: list[dict] = []
        self.evals: list[int] = []
        self.calls = 0

    def batches(self, start: int):
        def gen():
            i = start * (BATCH // self.micro)
            while True:
                g = torch.Generator().manual_seed(1000 + i)
                yield torch.randn(self.micro, DIM, generator=g), torch.randn(self.micro, 1, generator=g)
                i += 1
        return gen()

    def loss(self, net, batch, generator):
        self.calls += 1
        x, y = batch
        noise = torch.randn(y.shape, generator=generator) * 0.01  # the micro-batch's own seeded stream
        loss = ((net(x) - y - noise) ** 2).mean()
        if self.nan_at and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return loss, {"abs": (net(x) - y).abs().mean()}

    def save(self, step, optimizer):
        self.saved.append(step)

    def evaluate(self, step):
        self.evals.append(step)
        return {"step": step}, f"eval {step}"

    def log(self, record):
        self.records.append(record)

    def diverged(self, step, loss):
        return FloatingPointError(f"step {step}: {loss}")


def _plan(**kw) -> LoopPlan:
    base = dict(steps=6, batch=BATCH, seed=3, log_every=2, ckpt_every=4, eval_every=3, grad_accum=2,
                grad_clip=0.5)
    return LoopPlan(**{**base, **kw})


def _harness(plan: LoopPlan, model: torch.nn.Module, ema: torch.nn.Module | None = None) -> Harness:
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    lr = functools.partial(cosine_lr, 0.05, 2, plan.steps, 0.1)
    avg = Ema(ema, model, lambda s: 0.9) if ema is not None else None
    return Harness(plan, Dist(), model, list(model.parameters()), opt, lr, avg)


def _reference(model: torch.nn.Module, ema: torch.nn.Module, plan: LoopPlan
               ) -> tuple[list[float], list[float]]:
    """The obvious loop: per step, the accumulated micro-batch gradients, clip, AdamW, EMA."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    micro = BATCH // plan.grad_accum
    stream = Regression(model, micro).batches(0)
    lrs, losses = [], []
    for step in range(plan.steps):
        lr = cosine_lr(0.05, 2, plan.steps, 0.1, step)
        lrs.append(lr)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        total = 0.0
        for a in range(plan.grad_accum):
            x, y = next(stream)
            seed = step_seed(plan.seed, step, a)
            torch.manual_seed(seed)
            noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
            loss = ((model(x) - y - noise) ** 2).mean()
            (loss / plan.grad_accum).backward()
            total += float(loss.detach()) / plan.grad_accum
        losses.append(total)
        torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        opt.step()
        update_ema(ema, model, 0.9)
    return lrs, losses


def test_harness_matches_a_plain_loop_and_keeps_its_cadence():
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, 1)
    ref_model, ref_ema = copy.deepcopy(model), copy.deepcopy(model)
    ema = copy.deepcopy(model).requires_grad_(False)
    plan = _plan()
    harness = _harness(plan, model, ema)
    objective = Regression(model, BATCH // plan.grad_accum)
    assert harness.run(objective, 0) == plan.steps
    lrs, losses = _reference(ref_model, ref_ema, plan)
    for a, b in ((model, ref_model), (ema, ref_ema)):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
    assert [r["step"] for r in objective.records] == [2, 4, 6]
    assert [r["lr"] for r in objective.records] == [lrs[1], lrs[3], lrs[5]]
    window = [(losses[i] + losses[i + 1]) / 2 for i in (0, 2, 4)]  # the logged loss: the window's mean
    assert harness.losses == pytest.approx(window, rel=1e-6)
    assert all(r["abs"] > 0 and r["grad_norm"] > 0 for r in objective.records)
    assert objective.saved == [4, 6]  # every ckpt_every steps and at the end
    assert objective.evals == [3, 6] and [m["step"] for m in harness.metrics] == [3, 6]
    assert harness.last_values()["loss"] == pytest.approx(losses[-1], rel=1e-6)


def test_eval_final_off_skips_only_the_last_step():
    model = torch.nn.Linear(DIM, 1)
    objective = Regression(model, BATCH)
    _harness(_plan(grad_accum=1, eval_every=2, eval_final=False), model).run(objective, 0)
    assert objective.evals == [2, 4]


@pytest.mark.parametrize("every_step", [False, True])
def test_a_nan_loss_stops_before_its_checkpoint(every_step):
    model = torch.nn.Linear(DIM, 1)
    objective = Regression(model, BATCH, nan_at=3)  # the third step's loss is NaN
    plan = _plan(grad_accum=1, ckpt_every=1, log_every=5, check_every_step=every_step)
    with pytest.raises(FloatingPointError, match="step 3: nan"):
        _harness(plan, model).run(objective, 0)
    assert objective.saved == [1, 2]
    assert not any(math.isnan(r.get("loss", 0.0)) for r in objective.records)


def test_stop_at_saves_logs_and_a_resume_reaches_the_same_weights():
    torch.manual_seed(1)
    model = torch.nn.Linear(DIM, 1)
    straight = copy.deepcopy(model)
    _harness(_plan(grad_accum=1, eval_every=0), straight).run(Regression(straight, BATCH), 0)

    split = _harness(_plan(grad_accum=1, eval_every=0, stop_at=2), model)
    first = Regression(model, BATCH)
    assert split.run(first, 0) == 2
    assert first.saved == [2] and first.records[-1] == {"step": 2, "stopped": "stop_at"}
    rest = _harness(_plan(grad_accum=1, eval_every=0), model)
    rest.optimizer.load_state_dict(split.optimizer.state_dict())
    assert rest.run(Regression(model, BATCH), 2) == 6
    for p, q in zip(model.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_the_training_modules_import_one_way():
    """No cycle among sg2v.training's modules, counting imports inside functions and under TYPE_CHECKING."""
    import ast
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "sg2v" / "training"
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        deps = set()
        for n in ast.walk(ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("sg2v.training."):
                deps.add(n.module.rsplit(".", 1)[1])
            elif isinstance(n, ast.Import):
                deps |= {a.name.rsplit(".", 1)[1] for a in n.names if a.name.startswith("sg2v.training.")}
        graph[name] = deps & names

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for d in graph[start]:
            if d == goal or (d not in seen and (seen.add(d) or reaches(d, goal, seen))):
                return True
        return False

    assert graph["losses"] and graph["train"]  # the parser sees the imports
    assert [m for m in sorted(names) if reaches(m, m, set())] == []
