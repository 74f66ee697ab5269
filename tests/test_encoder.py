"""SGEncoder: shapes, padding never leaks, batching vs one graph at a time, pooling forms, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sg2v.config import DataConfig, model_config
from sg2v.graph import pad_graphs, parse_graph
from sg2v.models.encoder import SGEncoder
from sg2v.vocab import shapes_vocab

CFG = model_config("tiny")
VOCAB = shapes_vocab()


def random_graphs(rng: np.random.Generator, n: int, data: DataConfig = CFG.data):
    """Random valid shapes-world graphs (1..max_objects objects, 0..max_relationships relationships)."""
    graphs = []
    for _ in range(n):
        k = int(rng.integers(1, data.max_objects + 1))
        names = [VOCAB.object_names[i] for i in rng.choice(len(VOCAB.object_names), size=k, replace=False)]
        rels = {}
        for _ in range(int(rng.integers(0, data.max_relationships + 1)) if k > 1 else 0):
            s, o = (int(v) for v in rng.choice(k, size=2, replace=False))
            rel = (s, str(rng.choice(VOCAB.pred_names)), o)
            rels[rel] = list(rel)  # the parser rejects duplicates
        rels = list(rels.values())
        graphs.append(parse_graph({"objects": names, "relationships": rels}, VOCAB))
    return graphs


def to_torch(batch):
    return (torch.from_numpy(batch.objs), torch.from_numpy(batch.obj_mask), torch.from_numpy(batch.triples),
            torch.from_numpy(batch.triple_mask))


def make_encoder(seed: int = 0, data: DataConfig = CFG.data) -> SGEncoder:
    torch.manual_seed(seed)
    return SGEncoder(CFG.encoder, data).eval()


def test_shapes_and_masks():
    enc = make_encoder()
    rng = np.random.default_rng(0)
    objs, om, tr, tm = to_torch(pad_graphs(random_graphs(rng, 6), CFG.data.max_objects,
                                           CFG.data.max_relationships))
    ctx, cmask = enc(objs, om, tr, tm)
    L, D = CFG.data.context_tokens, CFG.encoder.context_dim
    assert ctx.shape == (6, L, D) and ctx.dtype == torch.float32
    assert cmask.shape == (6, L) and cmask.dtype == torch.float32
    assert torch.all(cmask[:, 0] == 1) and torch.equal(cmask[:, 1:], tm)
    assert torch.all(ctx[:, 1:][tm == 0] == 0)  # padded tokens zeroed
    assert torch.all(ctx[:, 1:][tm == 1].abs().sum(-1) > 0)
    assert torch.isfinite(ctx).all()
    torch.testing.assert_close(enc.global_embedding(objs, om, tr, tm), ctx[:, 0])
    torch.testing.assert_close(enc.local_tokens(objs, om, tr, tm), ctx[:, 1:])


def _garbage_padding(objs, om, tr, tm, extra_o, extra_t, gen):
    """Grow the padded axes by extra slots and fill every padding slot (old and new) with random ids."""
    b, o = objs.shape
    t = tr.shape[1]
    O, T = o + extra_o, t + extra_t
    objs2 = torch.randint(0, CFG.encoder.num_objs, (b, O), generator=gen)
    om2 = torch.zeros(b, O)
    tr2 = torch.stack([torch.randint(0, O, (b, T), generator=gen),
                       torch.randint(0, CFG.encoder.num_preds, (b, T), generator=gen),
                       torch.randint(0, O, (b, T), generator=gen)], dim=-1)
    tm2 = torch.zeros(b, T)
    real_o, real_t = om.bool(), tm.bool()
    objs2[:, :o] = torch.where(real_o, objs, objs2[:, :o])
    om2[:, :o] = om
    tr2[:, :t] = torch.where(real_t.unsqueeze(-1), tr, tr2[:, :t])
    tm2[:, :t] = tm
    return objs2, om2, tr2, tm2


@pytest.mark.parametrize("form", ["scatter", "onehot"])
def test_padding_never_leaks(form):
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    enc = make_encoder(1)
    enc.pooling_form = form
    objs, om, tr, tm = to_torch(pad_graphs(random_graphs(rng, 5), CFG.data.max_objects,
                                           CFG.data.max_relationships))
    ctx, cmask = enc(objs, om, tr, tm)
    for extra_o, extra_t in [(0, 0), (3, 5)]:
        objs2, om2, tr2, tm2 = _garbage_padding(objs, om, tr, tm, extra_o, extra_t, gen)
        ctx2, cmask2 = enc(objs2, om2, tr2, tm2)
        T = tr.shape[1]
        torch.testing.assert_close(ctx2[:, : 1 + T], ctx, rtol=1e-5, atol=1e-6)
        assert torch.all(ctx2[:, 1 + T:] == 0) and torch.all(cmask2[:, 1 + T:] == 0)


def test_batch_equals_one_graph_at_a_time():
    """Reference: each graph encoded alone at its exact size (no padding at all) equals its row in a batch."""
    rng = np.random.default_rng(2)
    enc = make_encoder(2)
    graphs = random_graphs(rng, 4)
    ctx, _ = enc(*to_torch(pad_graphs(graphs, CFG.data.max_objects, CFG.data.max_relationships)))
    for i, g in enumerate(graphs):
        objs = torch.tensor(g.objs)[None]
        tr = torch.tensor(g.triples)[None]
        alone, _ = enc(objs, torch.ones(objs.shape), tr, torch.ones(tr.shape[:2]))
        n = tr.shape[1]
        torch.testing.assert_close(ctx[i, : 1 + n], alone[0], rtol=1e-5, atol=1e-6)


def test_global_token_is_invariant_to_triple_order():
    rng = np.random.default_rng(3)
    enc = make_encoder(3)
    objs, om, tr, tm = to_torch(pad_graphs(random_graphs(rng, 4), CFG.data.max_objects,
                                           CFG.data.max_relationships))
    perm = torch.randperm(tr.shape[1], generator=torch.Generator().manual_seed(3))
    ctx, _ = enc(objs, om, tr, tm)
    ctx_p, cmask_p = enc(objs, om, tr[:, perm], tm[:, perm])
    torch.testing.assert_close(ctx_p[:, 0], ctx[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ctx_p[:, 1:], ctx[:, 1:][:, perm], rtol=1e-5, atol=1e-6)


def test_pooling_forms_agree_and_are_not_weights():
    rng = np.random.default_rng(4)
    enc = make_encoder(4)
    inputs = to_torch(pad_graphs(random_graphs(rng, 5), CFG.data.max_objects, CFG.data.max_relationships))
    a, _ = enc(*inputs)
    enc.set_pooling_form("onehot")
    b, _ = enc(*inputs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not any("pooling" in k for k in enc.state_dict())
    with pytest.raises(ValueError, match="pooling form"):
        enc.set_pooling_form("loop")


def test_gradients_reach_embeddings_and_real_rows_only():
    rng = np.random.default_rng(5)
    enc = make_encoder(5).train()
    objs, om, tr, tm = to_torch(pad_graphs(random_graphs(rng, 3), CFG.data.max_objects,
                                           CFG.data.max_relationships))
    ctx, cmask = enc(objs, om, tr, tm)
    (ctx * torch.randn_like(ctx)).sum().backward()
    grad = enc.obj_embed.weight.grad
    used = set(objs[om.bool()].tolist())
    for row in range(CFG.encoder.num_objs):
        assert (grad[row].abs().sum() > 0) == (row in used)


def test_state_dict_round_trip():
    rng = np.random.default_rng(6)
    a, b = make_encoder(6), make_encoder(7)
    inputs = to_torch(pad_graphs(random_graphs(rng, 3), CFG.data.max_objects, CFG.data.max_relationships))
    assert not torch.allclose(a(*inputs)[0], b(*inputs)[0])
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(*inputs)[0], b(*inputs)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: fast, enough here
def test_onnx_export_onehot_matches_torch(tmp_path):
    """The one-hot form exports to plain ONNX ops; ONNX Runtime reproduces PyTorch on fresh graphs."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(8)
    enc = make_encoder(8).set_pooling_form("onehot")
    batch = pad_graphs(random_graphs(rng, 2), CFG.data.max_objects, CFG.data.max_relationships)
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(enc, to_torch(batch), str(path), input_names=list(batch.as_feeds()),
                      output_names=["context", "context_mask"], opset_version=17, dynamo=False)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"ScatterElements", "ScatterND", "NonZero", "Loop", "If", "LayerNormalization"}, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fresh = pad_graphs(random_graphs(rng, 2), CFG.data.max_objects, CFG.data.max_relationships)
    got = sess.run(None, fresh.as_feeds())
    want = enc(*to_torch(fresh))
    np.testing.assert_allclose(got[0], want[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[1], want[1].numpy())
