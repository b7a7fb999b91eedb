"""``compare --estimators name:K``: particles per estimator, and the evaluations of the model
per step that the report counts (so that estimators can be compared at equal evaluations)."""

import csv
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from cli_support import COMPARE_PROBES, run_main
from torch import nn

from pyro_discrete.cli.compare.evaluations import evaluations_per_step
from pyro_discrete.cli.compare.settings import estimator_list
from pyro_discrete.cli.errors import CLIError
from pyro_discrete.cli.tasks import make_elbo, split_estimator_label


@pytest.fixture(autouse=True)
def isolate():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_labels_split_into_name_and_particles():
    assert split_estimator_label("rloo") == ("rloo", None)
    assert split_estimator_label("rloo:201") == ("rloo", 201)
    assert make_elbo("rloo:7").num_particles == 7
    assert make_elbo("rloo").num_particles == 2
    assert make_elbo("indecater:3").num_particles == 3
    assert estimator_list("indecater, rloo:201,rodeo:8") == ["indecater", "rloo:201", "rodeo:8"]
    # the same estimator at two particle counts is two runs
    assert estimator_list("rloo:2,rloo:4") == ["rloo:2", "rloo:4"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("rloo:0", ["rloo:0", "positive integer", "rloo:8"]),
        ("rloo:x", ["rloo:x", "positive integer"]),
        ("rloo:", ["positive integer"]),
        ("rloo:1", ["--estimators rloo:1", "num_particles >= 2"]),
        ("nosuch:4", ["unknown estimator", "nosuch:4", "valid names"]),
        ("rloo:4,rloo:4", ["twice"]),
    ],
)
def test_bad_labels_name_the_entry_and_the_fix(text, words):
    with pytest.raises(CLIError) as info:
        estimator_list(text)
    for word in words:
        assert word in str(info.value)


class _Bits(nn.Module):
    """Data-plate model: ``bits`` Bernoulli latents (or ``groups`` one-hot latents of
    ``values`` values) per row, a Gaussian observation of 4 dims."""

    def __init__(self, bits: int = 3, groups: int = 0, values: int = 3) -> None:
        super().__init__()
        self.one_hot = groups > 0
        width = groups * values if self.one_hot else bits
        self.shape = (groups, values) if self.one_hot else (bits,)
        self.encoder = nn.Linear(4, width)
        self.decoder = nn.Linear(width, 4)

    def _latent(self, logits):
        if self.one_hot:
            return dist.OneHotCategorical(logits=logits).to_event(1)
        return dist.Bernoulli(logits=logits).to_event(1)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self._latent(torch.zeros(x.shape[0], *self.shape)))
            mean = self.decoder(z.reshape(*z.shape[: -len(self.shape)], -1))
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            logits = self.encoder(x).reshape(x.shape[0], *self.shape)
            pyro.sample("z", self._latent(logits))


def _count(estimator: str, **shape) -> float:
    torch.manual_seed(0)
    module = _Bits(**shape)
    task = SimpleNamespace(model_name="bits", build_model=lambda: _Bits(**shape))
    args = (torch.randn(5, 4),)
    return evaluations_per_step(task, estimator, module.state_dict(), args, 0, torch.device("cpu"))


@pytest.mark.parametrize(
    "estimator, shape, expected",
    [
        ("reinforce", {}, 1),  # one pass
        ("st", {}, 1),
        ("rloo", {}, 2),  # the class's default of 2 particles
        ("rloo:5", {}, 5),  # one vectorised pass of 5 particles
        ("vimco:3", {}, 3),
        ("arm", {}, 2),  # the antithetic pair
        ("muprop", {}, 2),  # the sample and the mean-field point
        ("rebar", {}, 3),  # hard, relaxed, conditionally relaxed
        ("gumbel", {}, 2),  # the relaxed pass and the reporting pass at hard values
        ("indecater", {"bits": 3}, 4),  # 1 + D(K - 1) = 1 + 3
        ("indecater", {"bits": 6}, 7),
        ("indecater", {"groups": 2, "values": 3}, 5),  # 1 + 2 * 2
        ("indecater:2", {"groups": 2, "values": 3}, 10),  # per particle
    ],
)
def test_evaluations_are_counted_per_step(estimator, shape, expected):
    assert _count(estimator, **shape) == expected
    assert not list(pyro.get_param_store().keys())  # left empty


def test_compare_reports_particles_and_evaluations(capsys, tmp_path, data_cache):
    out = tmp_path / "cmp"
    code, _, err = run_main(
        capsys,
        "compare",
        "--model",
        "mixture_of_experts",
        *COMPARE_PROBES,
        "--estimators",
        "reinforce,rloo:3",
        "--reference",
        "rloo:3",
        "--steps",
        "3",
        "--out",
        str(out),
    )
    assert code == 0, err
    text = (out / "report.md").read_text()
    summary = text.split("\n\n")[2]  # title, mode sentence, then the summary table
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines()}
    # steps 3: reinforce evaluates once per step, rloo:3 three times
    assert "| 1 (3) |" in rows["reinforce"], rows["reinforce"]
    assert "| 3 (9) |" in rows["rloo:3"], rows["rloo:3"]
    with (out / "results.csv").open(newline="") as f:
        counts = {
            r["estimator"]: float(r["value"])
            for r in csv.DictReader(f)
            if r["metric"] == "evaluations_per_step" and r["seed"] == "mean"
        }
    assert counts == {"reinforce": 1.0, "rloo:3": 3.0}


def test_compare_refuses_a_bad_particle_count(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "compare", "--estimators", "rloo:1", "--out", str(tmp_path / "cmp")
    )
    assert code != 0
    assert "rloo:1" in err and "num_particles >= 2" in err
