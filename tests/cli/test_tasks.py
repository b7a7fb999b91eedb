"""Which estimators the command line offers for a model (pyro_discrete/cli/tasks.py): those
whose adapter handles every latent site kind the model's registry entry declares, refused at
option time, before any data or directory, with one line naming the estimator, the model and
the estimators that apply."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.poutine as poutine
import pytest
import torch
from cli_support import run_main
from pyro.poutine.util import site_is_subsample

from pyro_discrete.cli.tasks import estimators_for, make_elbo
from pyro_discrete.infer import ESTIMATORS
from pyro_discrete.infer.sites import SiteError, describe
from pyro_discrete.models import IMAGE_DATA, MODEL_SPECS


def _tiny(name: str) -> tuple[torch.nn.Module, tuple]:
    """A small instance of registered model ``name`` and a minibatch for it."""
    spec = MODEL_SPECS[name]
    torch.manual_seed(0)
    if spec.data == IMAGE_DATA:
        return spec.build(x_dim=12), (torch.bernoulli(torch.full((3, 12), 0.5)),)
    if spec.data == ("synthetic_moe",):
        from pyro_discrete.models import synthetic_moe_data

        data = synthetic_moe_data(num_points=3, seed=0)
        return spec.build(), (data.x, data.y)
    raise AssertionError(f"model {name!r} trains on {spec.data}: add a small instance here")


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_declared_latent_kinds_are_the_guides(name):
    model, args = _tiny(name)
    trace = poutine.trace(model.guide).get_trace(*args)
    latents = [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
    kinds = {describe(site["fn"]).kind for site in latents}
    assert kinds and set(MODEL_SPECS[name].latent_kinds) == kinds


@pytest.mark.parametrize("name", ["sbn_linear1", "mixture_of_experts"])
def test_offered_exactly_the_estimators_that_handle_the_model(name):
    """The first step of every estimator on the model: a SiteError where, and only where,
    the command line does not offer it."""
    offered = estimators_for(name)
    refused_at_step_one = []
    for estimator in ESTIMATORS:
        pyro.clear_param_store()
        model, args = _tiny(name)
        try:
            make_elbo(estimator).loss_and_grads(model.model, model.guide, *args)
        except SiteError:
            refused_at_step_one.append(estimator)
    assert refused_at_step_one  # each model has an estimator that cannot handle it
    assert sorted(set(ESTIMATORS) - set(offered)) == sorted(refused_at_step_one)


@pytest.mark.parametrize(
    "model, estimator, kind",
    [
        ("sbn_linear1", "lax", "Bernoulli"),
        ("categorical_vae", "arm", "OneHotCategorical"),
        ("mixture_of_experts", "rodeo", "OneHotCategorical"),
    ],
)
def test_fit_refuses_an_estimator_that_cannot_handle_the_model(
    capsys, tmp_path, model, estimator, kind
):
    out = tmp_path / "run"
    argv = ["fit", "--model", model, "--estimator", estimator, "--out", str(out)]
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    [line] = err.strip().splitlines()
    assert f"estimator '{estimator}'" in line and f"model '{model}'" in line and kind in line
    applicable = line.split("estimators that apply to it: ")[1].split(", ")
    assert applicable == estimators_for(model)
    assert "reinforce" in applicable and estimator not in applicable
    assert not out.exists()


def test_compare_names_every_estimator_that_cannot_handle_the_model(capsys, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mixture_of_experts", "--estimators", "rloo,arm,rodeo"]
    code, _, err = run_main(capsys, *argv, "--out", str(out))
    assert code == 2
    [line] = err.strip().splitlines()
    assert "estimators 'arm', 'rodeo' cannot handle" in line and "'rloo'" not in line
    assert list(tmp_path.iterdir()) == []


def test_every_estimator_is_offered_for_a_model_that_declares_no_kinds(monkeypatch):
    undeclared = dataclasses.replace(MODEL_SPECS["sbn_linear1"], name="new", latent_kinds=())
    monkeypatch.setitem(MODEL_SPECS, "new", undeclared)
    assert estimators_for("new") == list(ESTIMATORS)
