"""SyncBatchNorm through the fused ops: two gloo ranks on the CPU (Triton under the interpreter), each on
half of the batch, must give the gradients and BatchNorm buffers of one process on the whole batch.
Eager ``nn.SyncBatchNorm`` itself refuses CPU tensors; the fused path must not."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from regnet_kernels.testing import rel_err
from conftest import kernel_ready

HERE = os.path.dirname(os.path.abspath(__file__))
WORLD = 2


def _launch(tmp_path, mode: str):
    init_file = str(tmp_path / "init")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]))
    env.setdefault("TRITON_INTERPRET", "1")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "_dist_worker.py"), str(r), str(WORLD), init_file,
                               str(tmp_path), mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(WORLD)]
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        outs.append(out.decode(errors="replace"))
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-4000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single_process_reference():
    sys.path.insert(0, HERE)
    from _dist_worker import batch, build

    model = build()
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    return model


@pytest.mark.parametrize("mode", ["sync_then_optimize", "optimize_then_sync"])
def test_sync_batchnorm_two_gloo_ranks(tmp_path, mode):
    kernel_ready("triton", "conv_bn_act")
    if torch.cuda.is_available():
        pytest.skip("this test runs the CPU/gloo path (Triton interpreter); GPU runs use NCCL elsewhere")
    ranks = _launch(tmp_path, mode)
    ref = _single_process_reference()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    ref_bufs = dict(ref.named_buffers())
    assert ranks[0]["sync_modules"] > 0
    assert ranks[0]["state_keys"] == list(ref.state_dict())
    for r in ranks:
        for n, g in r["grads"].items():
            # gradients averaged over ranks; BN statistics were global, so this is the full-batch gradient
            assert rel_err(g, ref_grads[n]) < 1e-4, (mode, n, rel_err(g, ref_grads[n]))
        for n, b in r["buffers"].items():
            if b.is_floating_point():
                assert rel_err(b, ref_bufs[n]) < 1e-5, (mode, n, rel_err(b, ref_bufs[n]))
            else:
                assert torch.equal(b, ref_bufs[n]), n


def test_fsdp_step_runs(tmp_path):
    kernel_ready("triton", "conv_bn_act")
    if torch.cuda.is_available():
        pytest.skip("CPU/gloo variant")
    try:
        ranks = _launch(tmp_path, "fsdp")
    except AssertionError as e:
        if "FSDP" in str(e) and ("CUDA" in str(e) or "cuda" in str(e)):
            pytest.skip(f"FSDP needs CUDA in this torch build: {str(e)[-300:]}")
        raise
    assert all(torch.isfinite(r["loss"]) for r in ranks)


def test_ddp_fused_model_two_gloo_ranks(tmp_path):
    """Plain DDP (per-rank BatchNorm statistics) over a fused model: the ranks end with identical,
    all-reduced gradients, and the running statistics are each rank's own."""
    kernel_ready("triton", "conv_bn_act")
    if torch.cuda.is_available():
        pytest.skip("CPU/gloo variant")
    ranks = _launch(tmp_path, "ddp")
    for n, g in ranks[0]["grads"].items():
        assert torch.allclose(g, ranks[1]["grads"][n], rtol=0, atol=0), n
    differs = [n for n, b in ranks[0]["buffers"].items()
               if b.is_floating_point() and not torch.equal(b, ranks[1]["buffers"][n])]
    assert differs, "per-rank BatchNorm statistics should differ between ranks without SyncBatchNorm"
