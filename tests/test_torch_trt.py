"""The Torch-TensorRT engine route (sg2v.export.torch_trt), without Torch-TensorRT where it is not
installed: the exported programs it would convert compute what the bundle's ONNX graphs compute, the
engine.json it writes is what the TensorRT backend checks, its options follow the converter's signature, and a
wrong checkpoint or a missing Torch-TensorRT is one line. Building and running engines needs Torch-TensorRT
and a GPU (marked `trt` and `gpu`; skipped with the reason elsewhere, not run on this project's machines)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from sg2v import bundle_spec as spec  # noqa: E402
from sg2v.config import model_config  # noqa: E402
from sg2v.errors import BundleError, MissingDependencyError  # noqa: E402
from sg2v.export import onnx_export as ox  # noqa: E402
from sg2v.export import tensorrt as trt_build  # noqa: E402
from sg2v.export import torch_trt  # noqa: E402
from sg2v.io import sha256_file  # noqa: E402
from sg2v.models.sg2v import build_model  # noqa: E402
from sg2v.runtime.bundle import Bundle  # noqa: E402
from sg2v.training.checkpoint import save_checkpoint  # noqa: E402
from sg2v.vocab import shapes_vocab  # noqa: E402

HAVE_TORCH_TRT = importlib.util.find_spec("torch_tensorrt") is not None


def _config():
    cfg = model_config("tiny")
    data = dataclasses.replace(cfg.data, frames=2, height=8, width=8, max_objects=3, max_relationships=2)
    unet = dataclasses.replace(cfg.unet, channel_mult=(1,), attention_levels=(0,), patch_size=2)
    return cfg.replace(data=data, unet=unet)


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    cfg = _config()
    model, ema = build_model(cfg), build_model(cfg)
    with torch.no_grad():
        for p in list(model.parameters()) + list(ema.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(path, model, cfg, shapes_vocab(), ema=ema, step=3)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_trt")
    torch.set_num_threads(1)
    ckpt = _checkpoint(root / "model.pt", seed=21)
    ox.export_bundle(ckpt, root / "bundle")
    return ckpt, Bundle.open(root / "bundle"), root


def _ort_outputs(bundle, stage, args):
    session = ort.InferenceSession(str(bundle.stage_file(stage)), providers=["CPUExecutionProvider"])
    names = spec.stage_names(bundle.shapes)[stage][0]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})


@pytest.mark.slow
def test_exported_programs_compute_what_the_bundle_graphs_compute(exported):
    """The three stages of a layout-grounded bundle; the layout program's batch axis stays dynamic (a round
    of candidates, and 3 rows as a graph's last round draws)."""
    ckpt, bundle, _ = exported
    programs = torch_trt.exported_programs(torch_trt.load_bundle_model(ckpt, bundle), bundle)
    assert list(programs) == ["encoder", "layout", "unet"]
    for seed in (1, 2):
        inputs = torch_trt.example_inputs(bundle, seed=seed)
        inputs["layout_rows_3"] = tuple(a[:3] for a in inputs["layout"])
        for name, args in inputs.items():
            stage = name.split("_")[0]
            program = programs[stage]
            assert tuple(program.graph_signature.user_inputs) == spec.stage_names(bundle.shapes)[stage][0]
            with torch.no_grad():
                got = program.module()(*args)
            got = got if isinstance(got, tuple) else (got,)
            want = _ort_outputs(bundle, stage, args)
            assert len(got) == len(want) and got[0].shape[0] == args[0].shape[0]
            for g, w in zip(got, want):
                scale = max(float(np.abs(w).max()), 1e-6)
                assert float(np.abs(g.numpy() - w).max()) <= 1e-4 * scale, name


def test_the_checkpoint_must_be_the_bundles(exported, tmp_path, capsys):
    _, bundle, root = exported
    other = _checkpoint(tmp_path / "other.pt", seed=22)
    with pytest.raises(BundleError, match="is not the checkpoint bundle .* was exported from"):
        torch_trt.load_bundle_model(other, bundle)
    rc = torch_trt.main(["--ckpt", str(other), "--bundle", str(bundle.path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "is not the checkpoint" in err


def test_engine_json_is_what_the_trt_backend_checks(exported, tmp_path):
    ckpt, bundle, root = exported
    fp = spec.engine_fingerprint("NVIDIA H100 80GB HBM3", (9, 0), "10.13.0", bundle.precision)
    plans = {}
    for stage in bundle.stages:  # hashed into engine.json only; nothing here loads them
        plans[stage] = tmp_path / f"{stage}.plan"
        plans[stage].write_bytes(np.random.default_rng(len(stage)).bytes(64))
    _, bindings = torch_trt.binding_options(lambda program, arg_inputs: None, spec.ENCODER_OUTPUTS)
    info = torch_trt.engine_info(bundle, fp, "NVIDIA H100 80GB HBM3", (9, 0), {"tensorrt": "10.13.0"}, plans,
                                 {spec.ENCODER_STAGE: bindings, spec.UNET_STAGE: {"output0": "v"}})
    (tmp_path / trt_build.ENGINE_INFO).write_text(json.dumps(info))
    got = trt_build.check_engine_dir(tmp_path, fp, sources=trt_build.engine_sources(bundle))
    assert got["route"] == "torch_tensorrt" and got["bindings"]["unet"] == {"output0": "v"}
    assert got["bindings"]["encoder"] == {"output0": "context", "output1": "context_mask"}
    assert got["plan_sha256"]["unet"] == sha256_file(plans["unet"])
    reexported = ox.export_bundle(_checkpoint(tmp_path / "b.pt", seed=23), tmp_path / "b2")
    with pytest.raises(BundleError, match="built by Torch-TensorRT from checkpoint"):
        other = trt_build.engine_sources(Bundle.open(reexported.path))
        trt_build.check_engine_dir(tmp_path, fp, sources=other)


def test_options_follow_the_converter_signature():
    def old(program, arg_inputs, enabled_precisions=None):
        pass

    def new(program, arg_inputs, output_binding_names=None, use_explicit_typing=False):
        pass

    names = ("context", "context_mask", "objects")
    assert torch_trt.binding_options(new, names) == ({"output_binding_names": names}, {})
    assert torch_trt.binding_options(new, ("v",)) == ({"output_binding_names": "v"}, {})
    assert torch_trt.binding_options(old, ("v",)) == ({}, {"output0": "v"})
    assert torch_trt.binding_options(old, names)[1] == {"output0": "context", "output1": "context_mask",
                                                        "output2": "objects"}


# convert_exported_program_to_serialized_trt_engine's parameters that sg2v's options depend on, per release
# of pytorch/TensorRT (py/torch_tensorrt/dynamo/_compiler.py at each tag); every one ends in **kwargs, which
# takes an unknown name silently. _no_device is no release: a converter without the option.
def _v2_5(exported_program, inputs=None, *, arg_inputs=None, enabled_precisions=None, device=None, **kwargs):
    pass


def _v2_6_to_2_12(exported_program, inputs=None, *, arg_inputs=None, device=None, enabled_precisions=None,
                  use_explicit_typing=False, **kwargs):
    pass


def _v2_13(exported_program, inputs=None, *, arg_inputs=None, device=None, **kwargs):
    pass


def _no_device(exported_program, *, arg_inputs=None, enabled_precisions=None, **kwargs):
    pass


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_converter_options_follow_the_installed_torch_tensorrt(precision):
    """The device always (a build on --device 1 must not land on GPU 0); explicit typing where the version
    has it; nothing for precision from 2.13 (which would drop enabled_precisions into **kwargs unused); each
    gap said in one line."""
    cuda1 = torch.device("cuda", 1)
    got, note = torch_trt.converter_options(_v2_6_to_2_12, precision, 1, "2.10.0")
    assert got == {"device": cuda1, "use_explicit_typing": True} and note is None
    got, note = torch_trt.converter_options(_v2_13, precision, 1, "2.13.0")
    assert got == {"device": cuda1}
    assert note == ("sg2v: Torch-TensorRT 2.13.0 has neither use_explicit_typing nor enabled_precisions "
                    "(strongly typed only): the graph's own dtypes decide, as sg2v wants")
    got, note = torch_trt.converter_options(_v2_5, precision, 0, "2.5.0")
    want = {torch.float32, torch.float16} if precision == "fp16" else {torch.float32}
    assert got == {"device": torch.device("cuda", 0), "enabled_precisions": want}
    if precision == "fp16":
        assert note.startswith("sg2v: Torch-TensorRT 2.5.0 has no use_explicit_typing, so enabled_precisions "
                               "{float32, float16} lets TensorRT pick float16 kernels")
    else:
        assert note is None
    got, note = torch_trt.converter_options(_no_device, "fp32", 2, "x.y")
    assert got == {"enabled_precisions": {torch.float32}} and "\n" not in note
    assert note == ("sg2v: Torch-TensorRT x.y has no device option (building on the current device, "
                    "cuda:2)")


def test_layout_engine_inputs_span_the_layout_batch(exported, monkeypatch):
    """The converter gets the example tensors for the encoder and UNet (static shapes), and for the layout
    stage min / opt / max shapes of 1, one round and max_layout_batch candidates (a stand-in for
    `torch_tensorrt.Input`, which cannot be installed here)."""
    import sys
    import types

    _, bundle, _ = exported
    made = []

    def Input(**kw):  # noqa: N802 (torch_tensorrt's class name)
        made.append(kw)
        return kw

    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.SimpleNamespace(Input=Input))
    inputs = torch_trt.example_inputs(bundle, seed=3)
    assert torch_trt.converter_inputs(bundle, "unet", inputs["unet"]) == list(inputs["unet"])
    got = torch_trt.converter_inputs(bundle, "layout", inputs["layout"])
    top = bundle.shapes["max_layout_batch"]
    assert len(got) == len(spec.LAYOUT_INPUTS) == len(made)
    for kw, a in zip(got, inputs["layout"]):
        rest = tuple(a.shape[1:])
        assert a.shape[0] == spec.LAYOUT_PER_ROUND and kw["dtype"] == a.dtype
        assert (kw["min_shape"], kw["opt_shape"], kw["max_shape"]) == ((1, *rest), (8, *rest), (top, *rest))


@pytest.mark.skipif(HAVE_TORCH_TRT, reason="Torch-TensorRT is installed: its absence cannot be shown")
def test_without_torch_tensorrt_the_cli_names_the_extra(exported, capsys):
    ckpt, bundle, _ = exported
    with pytest.raises(MissingDependencyError, match=r"pip install 'sg2v\[torch-trt\]'"):
        torch_trt.build_torch_trt_engines(ckpt, bundle)
    assert torch_trt.main(["--ckpt", str(ckpt), "--bundle", str(bundle.path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch_tensorrt" in err


@pytest.mark.trt
@pytest.mark.gpu
def test_torch_tensorrt_engines_run_in_the_torch_free_runtime(exported, tmp_path):
    if not HAVE_TORCH_TRT:
        pytest.skip("Torch-TensorRT is not installed (it cannot be on this project's machines)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import shutil

    from sg2v.runtime import Pipeline

    ckpt, bundle, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    plans = torch_trt.build_torch_trt_engines(ckpt, copy)
    assert all(p.is_file() and p.stat().st_size > 0 for p in plans.values())
    graph = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    got = Pipeline.from_bundle(copy, backend="trt")(graph, seed=4, steps=3)
    want = Pipeline.from_bundle(copy, backend="ort")(graph, seed=4, steps=3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
