"""The earlier, ungrounded demo bundle (models/demo-ungrounded, format 1) gives for a few graphs and seeds
the frames it gave before the generation loop was shared: sha256 of the frames recorded on the project's CPU
machine, per backend (ONNX Runtime CPU, the PyTorch reference, the torch-cuda backend eager fp32 on the CPU,
and training-time evaluation).

Bit equality holds for one library build on one kind of CPU (its kernels pick instructions by CPU), so a
case whose library version or CPU features differ from the recorded ones is skipped with that reason.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo-ungrounded"  # the format-1 bundle the shared loop must reproduce
LEFT_OF = json.loads((ROOT / "examples" / "graphs" / "02_left_of.json").read_text())
THREE = {"objects": ["red circle", "blue square", "green triangle"],
         "relationships": [[0, "above", 1], [2, "right of", 0]]}
DDIM4 = {"steps": 4, "sampler": "ddim", "guidance_rescale": 0.0, "guidance": 2.5}
RECORDED = {"onnxruntime": "1.32.0", "torch": "2.13.0+cpu"}
# Kernels pick instructions by CPU, so each CPU kind has its own record: (machine, vendor, AVX-512) ->
# (backend, graph, seed, settings) -> sha256 of the (F, H, W, 3) uint8 frames. The AMD record was made with
# the code of commit 7556f28 (before this loop's later changes) on the project's AMD EPYC machine (Zen 4:
# AVX-512 with VNNI and BF16), and today's code gives the same frames there.
INTEL = ("x86_64", "GenuineIntel", True)
AMD = ("x86_64", "AuthenticAMD", True)
GOLDEN_BY_CPU = {
    INTEL: {
        ("ort", "left_of", 0, "default"): "283ebbdcac31f0c92961f24ce360ebf082c65546f4a98b038bb1d7307d74db13",
        ("ort", "left_of", 1, "default"): "89b006f9edd0726f1d63b247e860166bf835677fde109500729b4965099f7377",
        ("ort", "three", 7, "default"): "5921b5f33e2e3ecdd3febe6d9f35cca3470bae64f204e20039ef801226501678",
        ("ort", "three", 3, "ddim4"): "254c87ab56ba0fb845dce64ee101f0de3c8f62255f2818d4aa77a2f99b3938df",
        ("torch", "left_of", 0, "default"):
            "972b55a6520e1f3027e9aae7fd00d32c9fb2f2c350b08eff01609aa5284ea8d8",
        ("torch", "three", 3, "ddim4"): "afa847f918a8bb7df1c836cfdffb0cde268c08d4bb899572c92774ec4bc142b2",
        ("torch-cuda-eager-fp32", "left_of", 0, "default"):
            "5eafe8e2ad68c8e4d02e5847071799224a991e3f450d58137221723e2b5d06e8",
        ("evaluate", "left_of", 5, "eval4"):
            "4cb0160355b53792c954b3ec831798ee7362bfdfaca2cf4e45ff912fc8104b30",
        ("evaluate", "three", 6, "eval4"): "d4cf134acfe4795b46a7c84badffb30510fb9d8c8666c9002e97dd2de8ce1a07",
        ("evaluate", "left_of", 7, "eval4"):
            "22eaa5a85d449a1674b0af8bf891fe8dd3929b75ec6f170fcf3a16fc13bc5186",
    },
    AMD: {
        ("ort", "left_of", 0, "default"): "bce42d82afe9813ebf3988d9af697fa3a0eeb21fa6d33dc602811ed3011a9fe2",
        ("ort", "left_of", 1, "default"): "c455c9ce421b4221591a9b8b1d1e5d9d5779ad5f5f4d021ebf0a7628dc9b608a",
        ("ort", "three", 7, "default"): "3c2ad777704926b3921543bdb05c06dcd4b29a7558e8e9533deb482887438363",
        ("ort", "three", 3, "ddim4"): "254c87ab56ba0fb845dce64ee101f0de3c8f62255f2818d4aa77a2f99b3938df",
        ("torch", "left_of", 0, "default"):
            "8a3d49b9da0a6682d45b1b429e84a4125a199b432dfee37229b34bce9f4eb4e6",
        ("torch", "three", 3, "ddim4"): "aed61feb022ebac40461e342a26d567933ef790c85f904bce4921fd1e90ba58c",
        ("torch-cuda-eager-fp32", "left_of", 0, "default"):
            "9c36ce648ee7ddefd575619271f9450558484514835b528bef0ff82242b42f78",
        ("evaluate", "left_of", 5, "eval4"):
            "168c936532d03be74b7817c3061bc2e9c82678ebb85ae95ab6e98514d16612fe",
        ("evaluate", "three", 6, "eval4"): "e88ad3600969bc7bcd6ac9f4c016d02273f475dd69da91a62db01b3aa66a5b30",
        ("evaluate", "left_of", 7, "eval4"):
            "316de7a53aefca42b27f521bf463e14bd79743589adaaad453aa97d34ffc7a27",
    },
}
GRAPHS = {"left_of": LEFT_OF, "three": THREE}
SETTINGS = {"default": {}, "ddim4": DDIM4}


def _sha(frames) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def _need(package: str) -> None:
    try:
        have = metadata.version(package)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed")
    cpu = _cpu()
    if have != RECORDED[package] or cpu not in GOLDEN_BY_CPU:
        pytest.skip(f"golden frames were recorded with {package} {RECORDED[package]} on "
                    f"{sorted(GOLDEN_BY_CPU)}; this machine has {have} on {cpu}")


def _cpu() -> tuple[str, str | None, bool | None]:
    """(machine, vendor, AVX-512) of this CPU: the key of its golden record."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    vendors = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("vendor_id")]
    vendor = vendors[0] if vendors else None
    return platform.machine(), vendor, ("avx512f" in info) if info else None


def _cases(backend: str) -> list[tuple[str, int, str, str]]:
    return [(g, s, st, h) for (b, g, s, st), h in GOLDEN_BY_CPU[_cpu()].items() if b == backend]


def _check_single_calls(pipe, backend: str) -> None:
    for graph, seed, settings, sha in _cases(backend):
        assert _sha(pipe(GRAPHS[graph], seed=seed, **SETTINGS[settings])) == sha, (backend, graph, seed)


@pytest.mark.slow
def test_onnx_runtime_frames_single_and_batched():
    _need("onnxruntime")
    from sg2v.runtime import Pipeline

    pipe = Pipeline.from_bundle(DEMO, backend="ort", threads=1)
    _check_single_calls(pipe, "ort")
    batch = [c for c in _cases("ort") if c[2] == "default"]
    videos = pipe.generate([GRAPHS[g] for g, *_ in batch], [s for _, s, *_ in batch])
    assert [_sha(v) for v in videos] == [c[3] for c in batch]


@pytest.mark.slow
def test_torch_frames():
    _need("torch")
    from sg2v.runtime import Pipeline
    from sg2v.runtime.backends.torch_cuda import make_torch_cuda_backend

    pipe = Pipeline.from_bundle(DEMO, backend="torch", threads=1)
    _check_single_calls(pipe, "torch")
    fast = Pipeline(pipe.bundle, make_torch_cuda_backend(pipe.bundle, device="cpu", mode="eager",
                                                         precision="fp32"))
    _check_single_calls(fast, "torch-cuda-eager-fp32")


@pytest.mark.slow
def test_training_time_evaluation_frames():
    _need("torch")
    import torch

    from sg2v.runtime.backends.torch_ref import load_bundle_model
    from sg2v.runtime.bundle import Bundle
    from sg2v.training.evaluate import sample_videos

    bundle = Bundle.open(DEMO)
    model = load_bundle_model(bundle, torch.device("cpu"))
    cases = _cases("evaluate")
    videos = sample_videos(model, [GRAPHS[g] for g, *_ in cases], steps=4, guidance=9.0, seed=cases[0][1],
                           vocab=bundle.vocab)
    assert [_sha(v) for v in videos] == [c[3] for c in cases]
