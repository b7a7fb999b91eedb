"""CompiledSVI (backend="trace"): the replayed step is the same estimator as the eager one.

Gradient draws come from the compiled step itself: the model and guide parameters take
plain SGD steps with rate 1 (so a step moves them by the gradient estimate) and are put
back in place after each step; control variates keep their own small rate and adapt.
"""

from __future__ import annotations

import dataclasses
import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, max_abs_z
from infer.test_unbiased import (
    ANTITHETIC,
    NUM_DRAWS,
    RELAXATION,
    SCORE_FUNCTION,
    Z_LIMIT,
    _elbo,
)

from pyro_discrete.infer import (
    CompiledSVI,
    CompileError,
    DiscreteELBO,
    StructureChangedError,
    control_variates,
)
from pyro_discrete.testing import exact_gradients, exact_iwae_bound


def _sgd():
    # rate 1 for the model: a step moves a parameter by its gradient estimate
    return pyro.optim.SGD(lambda name: {"lr": 0.01 if name.startswith("pyro_discrete/") else 1.0})


def compiled_draws(
    problem, elbo, num_draws: int, seed: int = 0, backend: str = "trace", device: str = "cpu"
) -> tuple[dict, CompiledSVI]:
    """``num_draws`` ELBO-gradient estimates per parameter from replayed compiled steps."""
    problem.reset()
    store = pyro.get_param_store()
    for name in list(store.keys()):
        store[name] = store[name].detach().to(device)
    args = tuple(a.to(device) for a in problem.args)
    pyro.set_rng_seed(seed)
    svi = CompiledSVI(problem.model, problem.guide, _sgd(), elbo, backend=backend)
    params = problem.params()
    draws = {k: [] for k in params}
    for i in range(num_draws + 2):  # two steps build the program (eager, then traced)
        before = {k: p.detach().clone() for k, p in params.items()}
        svi.step(*args)
        with torch.no_grad():
            for k, p in params.items():
                if i >= 2:
                    draws[k].append(p - before[k])
                p.copy_(before[k])
    assert svi.num_traces == 1 and len(svi.programs) == 1
    return {k: torch.stack(v).cpu() for k, v in draws.items()}, svi


def _check(problem_name: str, label: str, options: dict) -> float:
    problem = PROBLEMS[problem_name]()
    exact = problem.exact()
    draws, _ = compiled_draws(problem, _elbo(label, options), NUM_DRAWS)
    z = max_abs_z(draws, exact)
    print(f"compiled {problem_name:20s} {label:12s} max|z| = {z:.2f}")
    return z


UNBIASED = {**SCORE_FUNCTION, **{k: RELAXATION[k] for k in ("rebar", "relax")}}


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("label", list(UNBIASED))
def test_compiled_unbiased(problem, label):
    assert _check(problem, label, UNBIASED[label]) < Z_LIMIT


@pytest.mark.parametrize("problem", ["sbn_two_layer", "global_and_local", "nested_plates"])
@pytest.mark.parametrize("label", list(ANTITHETIC))
def test_compiled_antithetic_unbiased(problem, label):
    assert _check(problem, label, ANTITHETIC[label]) < Z_LIMIT


def test_compiled_vimco_matches_exact_iwae_gradient():
    """The data repeated 75 times: each step sums 75 independent per-datum estimates, so
    40 steps give the 3,000 estimates that 3,000 steps gave."""
    problem = PROBLEMS["sbn_two_layer"]()
    k, copies = 3, 75
    problem.reset()
    x = problem.args[0]
    bound = sum(exact_iwae_bound(problem.model, problem.guide, k, x[i : i + 1]) for i in range(2))
    exact = exact_gradients(copies * bound, problem.params())
    elbo = DiscreteELBO("vimco", num_particles=k, max_plate_nesting=1)
    repeated = dataclasses.replace(problem, args=(x.repeat(copies, 1),))
    draws, _ = compiled_draws(repeated, elbo, 40)
    assert max_abs_z(draws, exact) < Z_LIMIT


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("label", ["reinforce", "rebar", "relax"])
def test_cuda_graph_unbiased(label):
    """The whole step in one CUDA graph (benchmarks/gpu_check.sh runs this on a GPU)."""
    problem = PROBLEMS["sbn_two_layer"]()
    exact = problem.exact()
    draws, svi = compiled_draws(
        problem, _elbo(label, UNBIASED[label]), NUM_DRAWS, backend="cuda_graph", device="cuda"
    )
    z = max_abs_z(draws, exact)
    print(f"cuda_graph sbn_two_layer {label:12s} max|z| = {z:.2f}")
    assert z < Z_LIMIT


def test_z_test_of_compiled_draws_detects_a_wrong_gradient():
    """The harness sees a gradient that is off (the compiled draws scaled by 0.8)."""
    problem = PROBLEMS["sbn_two_layer"]()
    exact = problem.exact()
    draws, _ = compiled_draws(problem, _elbo("muprop", {}), NUM_DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT
    assert max_abs_z({k: 0.8 * v for k, v in draws.items()}, exact) > Z_LIMIT


# ---------------------------------------------------------------------------------------
# Per-step state keeps changing inside the program
# ---------------------------------------------------------------------------------------


def _svi(problem, estimator, optim=None, **options):
    elbo = DiscreteELBO(estimator, max_plate_nesting=1, **options)
    optim = optim or pyro.optim.Adam({"lr": 0.01})
    return CompiledSVI(problem.model, problem.guide, optim, elbo, backend="trace")


def test_replayed_nvil_step_updates_running_statistics_every_step():
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    svi = _svi(problem, "nvil")
    svi.step(*problem.args)
    svi.step(*problem.args)
    stats = control_variates.running_statistics()
    assert any(name.endswith("/mean") for name in stats) and len(stats) == 4
    for _ in range(5):
        before = {k: v.clone() for k, v in stats.items()}
        svi.step(*problem.args)
        for name, value in control_variates.running_statistics().items():
            # the store's own tensor, updated in place
            assert value.data_ptr() == stats[name].data_ptr()
            assert not torch.equal(value, before[name]), name
    assert svi.num_traces == 1


def test_replayed_rebar_step_trains_eta_and_temperature():
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    svi = _svi(problem, "rebar", optim=pyro.optim.Adam({"lr": 0.05}))
    svi.step(*problem.args)
    svi.step(*problem.args)
    store = pyro.get_param_store()
    names = [k for k in store.keys() if k.endswith(("/eta", "/log_temperature"))]
    assert len(names) == 4
    for _ in range(3):
        before = {k: store[k].detach().clone() for k in names}
        svi.step(*problem.args)
        for k in names:
            assert not torch.equal(store[k].detach(), before[k]), k
    assert svi.num_traces == 1


def test_replays_draw_fresh_random_numbers():
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    svi = _svi(problem, "reinforce", optim=pyro.optim.SGD({"lr": 0.0}))
    losses = {float(svi.step(*problem.args)) for _ in range(12)}
    assert svi.num_traces == 1
    assert len(losses) > 4  # 16 joint latent values: replays see different samples


def test_loss_is_a_device_tensor_without_sync():
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    svi = _svi(problem, "reinforce")
    losses = [svi.step(*problem.args) for _ in range(3)]
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in losses)
    assert all(torch.isfinite(v) for v in losses)


# ---------------------------------------------------------------------------------------
# Input structures, refusals and structure checks
# ---------------------------------------------------------------------------------------


def test_each_input_structure_gets_its_own_program():
    problem = PROBLEMS["mixture_of_experts"]()
    problem.reset()
    svi = _svi(problem, "reinforce")
    x, y = problem.args
    for _ in range(3):
        svi.step(x, y)
    for _ in range(3):
        svi.step(x[:2], y[:2])  # the smaller last minibatch
    assert svi.num_traces == 2 and len(svi.programs) == 2
    for _ in range(3):
        svi.step(x, y)
    assert svi.num_traces == 2


def test_dtype_change_gets_a_new_program():
    problem = PROBLEMS["mixture_of_experts"]()
    problem.reset()
    svi = _svi(problem, "reinforce")
    x, y = problem.args
    for _ in range(3):
        svi.step(x, y)
    for _ in range(3):
        svi.step(x.float(), y.float())  # float32 data, float64 parameters
    assert svi.num_traces == 2 and len(svi.programs) == 2
    # key[1] describes the first tensor argument: (shape, dtype, device, requires_grad)
    assert {key[1][1] for key in svi.programs} == {torch.float32, torch.float64}


def test_non_tensor_argument_values_are_part_of_the_key():
    def model(x, scale):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x))))
            pyro.sample("x", dist.Normal(scale * z, 1.0), obs=x)

    def guide(x, scale):
        logit = pyro.param("logit", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=logit.expand(len(x))))

    x = torch.tensor([2.0, 3.0, 2.5])
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.1}), DiscreteELBO(), "trace")
    for scale in (1.0, 1.0, 1.0, 5.0, 5.0, 5.0):
        svi.step(x, scale)
    assert svi.num_traces == 2


def _branching_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x))))
    scale = 2.0 if z.sum() > 1 else 1.0  # Python control flow on a sampled value
    pyro.sample("x", dist.Normal(scale * z.sum(), 1.0), obs=x.sum())


def _branching_guide(x):
    logit = pyro.param("logit", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=logit.expand(len(x))))


def test_value_dependent_control_flow_is_refused_naming_the_line():
    x = torch.tensor([1.0, 2.0, 3.0])
    svi = CompiledSVI(
        _branching_model, _branching_guide, pyro.optim.Adam({"lr": 0.1}), DiscreteELBO(), "trace"
    )
    svi.step(x)  # first sight: eager
    before = pyro.param("logit").detach().clone()
    with pytest.raises(
        CompileError, match=r"test_svi\.py:\d+: `scale = 2.0 if z.sum\(\) > 1 else 1.0"
    ):
        svi.step(x)
    assert torch.equal(pyro.param("logit").detach(), before)  # the failed trace left no trace


def test_value_dependent_control_flow_can_fall_back_to_eager_with_a_warning():
    x = torch.tensor([1.0, 2.0, 3.0])
    svi = CompiledSVI(
        _branching_model,
        _branching_guide,
        pyro.optim.Adam({"lr": 0.1}),
        DiscreteELBO(),
        "trace",
        fallback="eager",
    )
    svi.step(x)
    with pytest.warns(RuntimeWarning, match="reads a tensor's value on the host"):
        svi.step(x)
    before = pyro.param("logit").detach().clone()
    svi.step(x)
    assert not torch.equal(pyro.param("logit").detach(), before)
    assert not svi.programs


def _switching_model_and_guide(extra: list):
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x))))
            if extra[0]:  # Python state: frozen in the program
                pyro.sample("extra", dist.Bernoulli(0.5 * torch.ones(len(x))))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        logit = pyro.param("logit", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=logit.expand(len(x))))

    return model, guide


@pytest.mark.filterwarnings("ignore:Found vars in model but not guide")
def test_check_every_names_a_site_that_appears():
    extra = [False]
    model, guide = _switching_model_and_guide(extra)
    x = torch.tensor([1.0, 2.0])
    svi = CompiledSVI(
        model, guide, pyro.optim.Adam({"lr": 0.1}), DiscreteELBO(), "trace", check_every=3
    )
    for _ in range(3):  # eager, traced, one replay
        svi.step(x)
    assert svi.num_traces == 1
    extra[0] = True
    svi.step(x)  # a replay: the frozen structure, not detected yet
    with pytest.raises(StructureChangedError, match="site 'extra' .* appeared"):
        svi.step(x)  # the third replay runs eagerly and compares
    assert not svi.programs


@pytest.mark.filterwarnings("ignore:Found vars in model but not guide")
def test_structure_differing_between_eager_and_traced_step_is_refused():
    extra = [False]
    model, guide = _switching_model_and_guide(extra)
    x = torch.tensor([1.0, 2.0])
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.1}), DiscreteELBO(), "trace")
    svi.step(x)
    extra[0] = True
    with pytest.raises(StructureChangedError, match="site 'extra'"):
        svi.step(x)
    assert not svi.programs  # nothing to replay


def test_param_initialised_with_a_fresh_tensor_every_call():
    """``pyro.param("theta", torch.tensor([...]))`` builds its init each call; harmless."""

    def model(x):
        theta = pyro.param("theta", torch.tensor([0.1, -0.2]))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(logits=theta[0].expand(len(x))))
            pyro.sample("x", dist.Normal(z + theta[1], 1.0), obs=x)

    def guide(x):
        phi = pyro.param("phi", torch.tensor([0.3]))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=phi.expand(len(x))))

    x = torch.tensor([1.0, 0.0, 2.0])
    svi = CompiledSVI(model, guide, pyro.optim.Adam({"lr": 0.1}), DiscreteELBO(), "trace")
    values = []
    for _ in range(6):
        svi.step(x)
        values.append(pyro.param("theta").detach().clone())
    assert svi.num_traces == 1
    assert all(not torch.equal(a, b) for a, b in zip(values, values[1:], strict=False))


def test_non_pyro_optimizer_is_refused():
    with pytest.raises(TypeError, match="pyro.optim"):
        CompiledSVI(lambda: None, lambda: None, torch.optim.Adam, DiscreteELBO(), "trace")


def test_cuda_graph_backend_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(CompileError, match="needs a CUDA device"):
        CompiledSVI(lambda: None, lambda: None, pyro.optim.Adam({}), DiscreteELBO(), "cuda_graph")


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------


def _run(problem, optim_factory, steps: int, svi=None):
    svi = svi or _svi(problem, "nvil", optim=optim_factory())
    for _ in range(steps):
        svi.step(*problem.args)
    return svi


@pytest.mark.parametrize("optim_name", ["adam", "multi_tensor_adam", "clipped_adam"])
def test_resume_from_checkpoint_is_bit_identical(optim_name, tmp_path):
    from pyro_discrete.optim import MultiTensorAdam

    factories = {
        "adam": lambda: pyro.optim.Adam({"lr": 0.05}),
        "multi_tensor_adam": lambda: MultiTensorAdam({"lr": 0.05}),
        "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99}),
    }
    problem = PROBLEMS["sbn_two_layer"]()

    problem.reset()
    pyro.set_rng_seed(7)
    _run(problem, factories[optim_name], 10)
    uninterrupted = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    problem.reset()
    pyro.set_rng_seed(7)
    svi = _run(problem, factories[optim_name], 5)
    params, optim_state = tmp_path / "params.pt", io.BytesIO()
    pyro.get_param_store().save(params)
    torch.save(svi.optim.get_state(), optim_state)
    rng = torch.get_rng_state()

    pyro.clear_param_store()
    optim_state.seek(0)
    pyro.get_param_store().load(params)
    optim = factories[optim_name]()
    optim.set_state(torch.load(optim_state, weights_only=False))
    torch.set_rng_state(rng)
    resumed = _run(problem, None, 5, svi=_svi(problem, "nvil", optim=optim))
    assert resumed.num_traces == 1
    store = pyro.get_param_store()
    assert set(store.keys()) == set(uninterrupted)
    for name, value in uninterrupted.items():
        assert torch.equal(store[name].detach(), value), name
