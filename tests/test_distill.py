"""Guidance-distilled few-step students: the consistency loss against a hand computation, the student's
guidance input, its sampling through the one loop, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sg2v.config import DistillConfig, model_config, student_config
from sg2v.errors import ConfigError
from sg2v.graph import pad_graphs, parse_graph
from sg2v.models.sg2v import build_model
from sg2v.sampling import guide
from sg2v.schedule import timesteps
from sg2v.training.backend import model_generator
from sg2v.training.losses import alphas_cumprod_tensor, consistency_distill_loss, q_sample
from sg2v.vocab import shapes_vocab

TEACHER = model_config("tiny")
DISTILL = DistillConfig(guidance_min=2.0, guidance_max=6.0, guidance_rescale=0.7, grid_steps=10)
STUDENT = student_config(TEACHER, DISTILL, steps=2)
D = TEACHER.data
VOCAB = shapes_vocab()
GRAPHS = [{"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]},
          {"objects": ["green triangle"], "relationships": []},
          {"objects": ["white square", "cyan circle", "yellow triangle"], "relationships": [[2, "above", 0]]}]


def _models(seed: int = 0):
    torch.manual_seed(seed)
    teacher = build_model(TEACHER).eval()
    with torch.no_grad():  # never on zeros: the zero-initialised outputs get random weights too
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = build_model(STUDENT).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("unet.guidance_embed.") for k in missing)
    with torch.no_grad():
        for p in student.unet.guidance_embed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher, student


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    parsed = [parse_graph(x, VOCAB, D.max_objects, D.max_relationships) for x in GRAPHS]
    feeds = {k: torch.from_numpy(v) for k, v in pad_graphs(parsed, D.max_objects, D.max_relationships)
             .as_feeds().items()}
    x0 = torch.rand(3, D.frames, D.channels, D.height, D.width, generator=g) * 2 - 1
    lo = torch.rand(3, D.padded_objects, D.frames, 2, generator=g) * 0.6
    boxes = torch.cat([lo, lo + 0.25], -1)
    for i, gr in enumerate(GRAPHS):
        boxes[i, len(gr["objects"]):] = 0.0
    return x0, feeds, boxes


def test_consistency_loss_matches_a_hand_computation():
    teacher, student = _models()
    x0, graph, boxes = _batch()
    gen_seed = 3
    got = consistency_distill_loss(student, teacher, x0, graph, torch.Generator().manual_seed(gen_seed),
                                   boxes=boxes, guidance_range=(2.0, 6.0), rescale=0.7, grid_steps=10)
    # the same draws in the documented order: grid index, noise, guidance
    g = torch.Generator().manual_seed(gen_seed)
    ac = alphas_cumprod_tensor(TEACHER.diffusion).double()
    grid = timesteps(1000, 10, "trailing")
    n = torch.randint(0, 10, (3,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    w = 2.0 + 4.0 * torch.rand(3, generator=g)
    want = []
    with torch.no_grad():
        ctx, cmask, objects = student.encode_all(graph)
        for i in range(3):
            t, t_next = int(grid[n[i]]), (int(grid[n[i] + 1]) if n[i] + 1 < 10 else None)
            a, s = ac[t].sqrt().item(), (1 - ac[t]).sqrt().item()
            xt = q_sample(x0[i:i + 1], torch.tensor([t]), noise[i:i + 1], ac.float())
            null_ctx, null_mask = teacher.null_context_batch(1)
            vc = teacher(xt, torch.tensor([float(t)]), ctx[i:i + 1], cmask[i:i + 1], objects[i:i + 1],
                         boxes[i:i + 1])
            vu = teacher(xt, torch.tensor([float(t)]), null_ctx, null_mask,
                         torch.zeros_like(objects[i:i + 1]), torch.zeros_like(boxes[i:i + 1]))
            v = guide(vc, vu, float(w[i]), 0.7)
            x0_t, eps = a * xt - s * v, s * xt + a * v
            if t_next is None:
                target = x0_t
            else:
                an, sn = ac[t_next].sqrt().item(), (1 - ac[t_next]).sqrt().item()
                xn = an * x0_t + sn * eps
                vs = student(xn, torch.tensor([float(t_next)]), ctx[i:i + 1], cmask[i:i + 1],
                             objects[i:i + 1], boxes[i:i + 1], guidance=w[i:i + 1])
                target = an * xn - sn * vs
            vp = student(xt, torch.tensor([float(t)]), ctx[i:i + 1], cmask[i:i + 1], objects[i:i + 1],
                         boxes[i:i + 1], guidance=w[i:i + 1])
            want.append(((a * xt - s * vp - target) ** 2).mean())
    torch.testing.assert_close(got.detach(), torch.stack(want).mean(), rtol=2e-4, atol=1e-6)


def test_the_guidance_input_changes_the_output_and_starts_at_the_teacher():
    teacher, student = _models(1)
    x0, graph, boxes = _batch(1)
    with torch.no_grad():
        ctx, cmask, objects = student.encode_all(graph)
        t = torch.full((3,), 400.0)
        a = student(x0, t, ctx, cmask, objects, boxes, guidance=torch.full((3,), 2.0))
        b = student(x0, t, ctx, cmask, objects, boxes, guidance=torch.full((3,), 6.0))
        for p in student.unet.guidance_embed[-1].parameters():
            p.zero_()  # the student as distillation starts it: the teacher's conditional model
        c = student(x0, t, ctx, cmask, objects, boxes, guidance=torch.full((3,), 6.0))
        want = teacher(x0, t, ctx, cmask, objects, boxes)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="guidance-distilled student"):
        student(x0, t, ctx, cmask, objects, boxes)


def test_student_samples_one_row_per_video_and_refuses_what_it_cannot_do():
    _, student = _models(2)
    gen = model_generator(student, STUDENT, VOCAB)
    parsed = [parse_graph(x, VOCAB, D.max_objects, D.max_relationships, D.frames) for x in GRAPHS]
    feeds = pad_graphs(parsed, D.max_objects, D.max_relationships).as_feeds()
    rows = []
    gen.backend.unet.fn.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    out = gen.run(feeds, [1, 2, 3], gen.settings(guidance=4.0), graphs=parsed)
    assert out.frames.shape == (3, D.frames, D.height, D.width, 3)
    assert rows == [3, 3]  # two DDIM steps, one UNet call of B rows each (no unconditional rows)
    alone = gen.run({k: v[1:2] for k, v in feeds.items()}, [2], gen.settings(guidance=4.0),
                    graphs=parsed[1:2])
    assert np.abs(alone.frames[0].astype(int) - out.frames[1].astype(int)).max() <= 1
    for kw, message in (({"steps": 3}, "distilled for \\[1, 2, 5, 10\\] steps"),
                        ({"sampler": "dpmpp2m"}, "distilled for 'ddim'"),
                        ({"guidance": 9.0}, "guidance in \\[2, 6\\]"),
                        ({"guidance_rescale": 0.0}, "cannot change")):
        with pytest.raises(ConfigError, match=message):
            gen.settings(**kw)


def test_distilling_a_student_is_refused_in_one_line(tmp_path):
    from sg2v.training.checkpoint import save_checkpoint
    from sg2v.training.train import TrainConfig, TrainError, train

    _, student = _models(3)
    save_checkpoint(tmp_path / "student.pt", student, STUDENT, VOCAB)
    with pytest.raises(TrainError, match="is a guidance-distilled student; distil from a classifier-free"):
        train(TrainConfig(objective="distill", init=str(tmp_path / "student.pt"), steps=1, batch=2,
                          workers=0, eval_every=0, out=str(tmp_path / "run")), progress=False)
