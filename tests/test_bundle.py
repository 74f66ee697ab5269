"""Bundle reader: a valid bundle opens; missing, corrupt, tampered, escaping and newer bundles fail clearly.

The bundles here are small but real: ONNX graphs written with `onnx.helper` that run on ONNX Runtime (a toy
encoder and UNet with the contract's I/O), the manifest keys of docs/ARCHITECTURE.md, real sha256 hashes.
The bundle builder `make_fake_bundle` and the float64 references `ref_encoder` / `ref_unet` are in helpers.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import fake_config, make_fake_bundle, ref_encoder, ref_unet, write_manifest

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError
from sg2v.runtime.bundle import Bundle
from sg2v.vocab import shapes_vocab


def _manifest(root: Path) -> dict:
    return json.loads((root / spec.MANIFEST).read_text())


@pytest.fixture
def bundle_dir(tmp_path: Path, test_seed) -> Path:
    return make_fake_bundle(tmp_path / "bundle", seed=test_seed % 1000)[0]


def test_valid_bundle_opens_with_its_contents(tmp_path):
    root, w = make_fake_bundle(tmp_path / "b", seed=7)
    b = Bundle.open(root)
    assert b.config == fake_config()
    assert b.vocab == shapes_vocab()
    assert b.shapes == spec.shapes(b.config.data, b.config.encoder, 4) and b.max_batch == 4
    assert b.stages["unet"]["inputs"][0]["shape"][0] == spec.UNET_BATCH_DIM
    np.testing.assert_array_equal(b.null_context, w["null"])
    assert b.null_context_mask[0, 0] == 1 and not b.null_context_mask[0, 1:].any()
    assert not b.null_context.flags.writeable
    assert b.stage_file("unet") == root / "unet.onnx"
    assert b.alphas_cumprod().shape == (b.config.diffusion.num_train_timesteps,)


def test_format_1_bundles_still_open_with_their_fixed_batch(tmp_path):
    root, _ = make_fake_bundle(tmp_path / "v1", version=1)
    b = Bundle.open(root)
    assert b.manifest["format_version"] == 1 and b.max_batch == 1
    assert b.shapes == spec.shapes(b.config.data, b.config.encoder, None)
    assert b.shapes["encoder_batch"] == 1 and b.shapes["unet_batch"] == 2 and "max_batch" not in b.shapes
    assert [d["shape"][0] for d in b.stages["unet"]["inputs"]] == [2, 2, 2, 2]


@pytest.mark.parametrize("bad", [0, -3, "32", 1.5, True, spec.MAX_BATCH_LIMIT + 1, None])
def test_max_batch_must_be_a_sane_integer(bundle_dir, bad):
    m = _manifest(bundle_dir)
    if bad is None:
        del m["shapes"]["max_batch"]
    else:
        m["shapes"]["max_batch"] = bad
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"shapes.max_batch .* is not an integer in \[1, 4096\]"):
        Bundle.open(bundle_dir)


def test_missing_folder_and_missing_manifest(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="does not exist; pass the folder written by sg2v-export"):
        Bundle.open(tmp_path / "nowhere")
    (bundle_dir / spec.MANIFEST).unlink()
    with pytest.raises(BundleError, match="no manifest.json: not a bundle, or an interrupted export"):
        Bundle.open(bundle_dir)


def test_corrupt_manifest(bundle_dir):
    (bundle_dir / spec.MANIFEST).write_text('{"format": "sg2v-bundle", ')
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        Bundle.open(bundle_dir)


def test_newer_format_version_names_the_fix(bundle_dir):
    m = _manifest(bundle_dir)
    m["format_version"] = spec.FORMAT_VERSION + 1
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"by a newer sg2v; upgrade the runtime \(pip install -U sg2v\)"):
        Bundle.open(bundle_dir)


def test_other_format_is_refused(bundle_dir):
    m = _manifest(bundle_dir)
    m["format"] = "something-else"
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format is 'something-else'"):
        Bundle.open(bundle_dir)


def test_tampered_file_fails_sha256_but_not_without_verify(bundle_dir):
    path = bundle_dir / spec.UNET_ONNX
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="unet.onnx does not match its sha256"):
        Bundle.open(bundle_dir)
    Bundle.open(bundle_dir, verify=False)  # sizes still agree: only the hash check sees it


def test_truncated_and_missing_files(bundle_dir):
    path = bundle_dir / spec.ENCODER_ONNX
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="encoder.onnx has .* bytes, the manifest records"):
        Bundle.open(bundle_dir, verify=False)
    path.unlink()
    with pytest.raises(BundleError, match="encoder.onnx is missing"):
        Bundle.open(bundle_dir, verify=False)


@pytest.mark.parametrize("bad", ["../outside.npy", "/etc/hostname", "sub/../../outside.npy",
                                 "./null_context.npy", "a\\b.npy"])
def test_paths_must_stay_inside(bundle_dir, bad):
    m = _manifest(bundle_dir)
    m["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="absolute|'..'|inside"):
        Bundle.open(bundle_dir)


def test_symlink_escaping_the_bundle_is_refused(tmp_path, bundle_dir):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(32))
    os.symlink(secret, bundle_dir / "weights.bin")
    m = _manifest(bundle_dir)
    write_manifest(bundle_dir, m)  # hashes through the link: only the path check can catch it
    assert "weights.bin" in _manifest(bundle_dir)["files"]
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        Bundle.open(bundle_dir)


def test_stage_path_outside_is_refused(bundle_dir):
    m = _manifest(bundle_dir)
    m["stages"]["unet"]["file"] = "../unet.onnx"
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"stages\['unet'\].file path '../unet.onnx' contains '..'"):
        Bundle.open(bundle_dir)


def test_unlisted_stage_file_is_refused(bundle_dir):
    m = _manifest(bundle_dir)
    del m["files"][spec.UNET_ONNX]
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="is not listed .* in 'files'"):
        Bundle.open(bundle_dir)


def test_pickled_null_context_is_refused(bundle_dir):
    np.save(bundle_dir / spec.NULL_CONTEXT, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    write_manifest(bundle_dir, _manifest(bundle_dir))
    with pytest.raises(BundleError, match="null_context.npy is not a plain .npy array"):
        Bundle.open(bundle_dir)


def test_wrong_null_context_shape_is_refused(bundle_dir, rng):
    wrong = rng.standard_normal((1, 3, 8)).astype(np.float32)
    np.save(bundle_dir / spec.NULL_CONTEXT, wrong)
    write_manifest(bundle_dir, _manifest(bundle_dir))
    with pytest.raises(BundleError, match=r"null_context.npy is float32 \(1, 3, 8\), expected float32"):
        Bundle.open(bundle_dir)


def test_shapes_and_stage_io_must_match_the_config(bundle_dir):
    m = _manifest(bundle_dir)
    m["shapes"]["frames"] += 1
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest shapes disagree with model_config: frames=3"):
        Bundle.open(bundle_dir)
    m["shapes"]["frames"] -= 1
    m["stages"]["unet"]["inputs"][0]["shape"] = [1, 2, 3, 8, 8]
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="stage 'unet' inputs .* differ"):
        Bundle.open(bundle_dir)


def test_fake_graphs_match_their_float64_references(tmp_path, rng):
    """The toy graphs used by the runtime tests compute what their references say (on fresh inputs)."""
    ort = pytest.importorskip("onnxruntime")
    root, w = make_fake_bundle(tmp_path / "b", seed=3)
    b = Bundle.open(root)
    s = b.shapes
    o, t = s["padded_objects"], s["padded_triples"]
    objs = rng.integers(0, b.config.encoder.num_objs, (1, o)).astype(np.int64)
    triples = np.stack([rng.integers(0, o, (1, t)), rng.integers(0, b.config.encoder.num_preds, (1, t)),
                        rng.integers(0, o, (1, t))], -1).astype(np.int64)
    feeds = {"objs": objs, "obj_mask": (rng.random((1, o)) > 0.3).astype(np.float32), "triples": triples,
             "triple_mask": (rng.random((1, t)) > 0.3).astype(np.float32)}
    enc = ort.InferenceSession(str(b.stage_file("encoder")), providers=["CPUExecutionProvider"])
    got = enc.run(None, feeds)
    want = ref_encoder(w, **feeds)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-6)
    x = rng.standard_normal((2, s["frames"], s["channels"], s["height"], s["width"])).astype(np.float32)
    tt = rng.uniform(0, 999, 2).astype(np.float32)
    ctx = rng.standard_normal((2, s["context_tokens"], s["context_dim"])).astype(np.float32)
    cm = (rng.random((2, s["context_tokens"])) > 0.4).astype(np.float32)
    cm[:, 0] = 1.0
    unet = ort.InferenceSession(str(b.stage_file("unet")), providers=["CPUExecutionProvider"])
    (v,) = unet.run(None, {"x": x, "t": tt, "context": ctx, "context_mask": cm})
    np.testing.assert_allclose(v, ref_unet(w, x, tt, ctx, cm), rtol=1e-5, atol=1e-5)
