"""Two CPU processes (DDP, gloo, one thread each) training with DiscreteSVIModule.

One launch of ``ddp_worker.py train`` (Lightning starts the second process) trains an
NVIL and a RELAX belief net and draws RELAX gradients at fixed parameters; the tests read
what each rank wrote. Resuming the 2-process NVIL checkpoint on 1 process runs here, in
this process; resuming a 1-process checkpoint on 2 is tests/test_examples.py's
``test_data_parallel_resumes_on_two_processes``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from infer.problems import sbn_two_layer, z_scores

from pyro_discrete.lightning import CHECKPOINT_KEY

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
Z_LIMIT = 4.5


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), "train", str(out), "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _ranks(out: Path, run: str) -> tuple[dict, dict]:
    return tuple(torch.load(out / f"{run}_rank{r}.pt", weights_only=True) for r in (0, 1))


@pytest.mark.parametrize("run", ["nvil", "relax"])
def test_ranks_end_identical(trained, run):
    rank0, rank1 = _ranks(trained, run)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["global_step"] == rank1["global_step"] == 30
    params0, params1 = rank0["store"]["params"], rank1["store"]["params"]
    assert params0.keys() == params1.keys()
    control_variates = [n for n in params0 if n.startswith(f"pyro_discrete/{run}/")]
    assert control_variates, "the estimator's control-variate parameters were not trained"
    for name in params0:
        assert torch.equal(params0[name], params1[name]), name
    if run == "nvil":  # NVIL's running mean and variance, averaged every step
        stats = rank0["store"]["running_statistics"]
        assert stats == ["pyro_discrete/nvil/z1/mean", "pyro_discrete/nvil/z1/variance"]
        assert stats == rank1["store"]["running_statistics"]


@pytest.mark.parametrize("run", ["nvil", "relax"])
def test_loss_goes_down_on_each_rank(trained, run):
    for rank in _ranks(trained, run):
        losses = torch.tensor(rank["losses"])
        assert len(losses) == 30 and torch.isfinite(losses).all()
        assert losses[-8:].mean() < losses[:8].mean() - 5.0


def test_control_variates_train_at_their_own_rate(trained):
    rank0, _ = _ranks(trained, "relax")
    assert rank0["lr"] == {"model_and_guide": 0.03, "control_variates": 0.3}
    assert rank0["adam_steps"] == 30


def test_gradient_is_the_average_of_each_ranks_own_estimate(trained):
    rank0, rank1 = _ranks(trained, "gradients")
    names = rank0["averaged"].keys()
    assert any(n.startswith("pyro_discrete/relax/") for n in names)
    for name in names:
        local0, local1 = rank0["local"][name], rank1["local"][name]
        # each rank drew its own samples, so its own estimate differs from the other's
        assert not torch.equal(local0, local1), name
        torch.testing.assert_close(rank0["averaged"][name], (local0 + local1) / 2)
        torch.testing.assert_close(rank1["averaged"][name], rank0["averaged"][name])
    # the guide's samples of every step differ between the ranks
    differ = (rank0["samples"] != rank1["samples"]).flatten(1).any(1)
    assert differ.all()


def test_averaged_gradient_is_unbiased(trained):
    rank0, _ = _ranks(trained, "gradients")
    torch.set_default_dtype(torch.float64)
    try:
        exact = sbn_two_layer().exact()
    finally:
        torch.set_default_dtype(torch.float32)
    draws = {name: -rank0["averaged"][name] for name in exact}  # ELBO gradient draws
    assert all(d.shape[0] == 40 for d in draws.values())
    z = z_scores(draws, exact)
    worst = max(v.abs().max().item() for v in z.values())
    assert worst < Z_LIMIT, {k: v.abs().max().item() for k, v in z.items()}
    # the test has the power to see a bias of 10% of the gradient
    biased = {name: 1.1 * d for name, d in draws.items()}
    assert max(v.abs().max().item() for v in z_scores(biased, exact).values()) > Z_LIMIT


def test_running_statistics_are_averaged_or_refused(trained):
    rank0, rank1 = _ranks(trained, "sync")
    assert rank0["averaged"] == rank1["averaged"] == 1
    assert rank0["value"] == rank1["value"] == 1.5  # the mean of 1 and 2
    for rank in (rank0, rank1):
        assert "processes hold different running statistics" in rank["error"]
    assert "pyro_discrete/test/other_site/mean" in rank1["error"]


def test_resume_two_process_checkpoint_on_one_process(trained, tmp_path):
    worker = _worker_module()
    checkpoint = trained / "nvil" / "checkpoints" / "step=15.ckpt"
    saved = torch.load(checkpoint, weights_only=True)[CHECKPOINT_KEY]["param_store"]
    worker.main("resume", str(tmp_path), "1", str(checkpoint))
    run = torch.load(tmp_path / "resume_on_1_rank0.pt", weights_only=True)
    start = run["start"]
    # state restored: step counter, Adam's step count, every parameter and statistic
    assert start["global_step"] == 15 and start["adam_steps"] == 15.0
    assert start["store"]["params"].keys() == saved["params"].keys()
    for name, value in saved["params"].items():
        assert torch.equal(start["store"]["params"][name], value), name
    assert start["store"]["running_statistics"] == saved["running_statistics"] != []
    # and training went on from there
    assert run["world_size"] == 1
    assert run["global_step"] == 30 and run["adam_steps"] == 30.0
    assert len(run["losses"]) == 15 and all(torch.isfinite(torch.tensor(run["losses"])))
    decoder = "sbn_decoder$$$prior_logits"
    assert not torch.equal(run["store"]["params"][decoder], saved["params"][decoder])
    assert (tmp_path / "resume_on_1" / "checkpoints" / "step=30.ckpt").exists()
