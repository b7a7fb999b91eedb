"""CompiledSVI is a drop-in for ``pyro.infer.SVI`` + ``DiscreteELBO`` (issue 21).

Each case is either honoured exactly as the eager step would (the same parameters after
the same steps, from the same seed) or refused with an error naming what is wrong and the
fix. Never a silently different result.
"""

from __future__ import annotations

import types

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from pyro_discrete.infer import CompiledSVI, CompileError, DiscreteELBO, NonFiniteLossError


def _model(x, beta=1.0):
    loc = pyro.param("loc", torch.tensor(0.5))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(len(x))))
        pyro.sample("x", dist.Normal(loc + 2.0 * beta * z, 1.0), obs=x)


def _guide(x, beta=1.0):
    logit = pyro.param("logit", torch.tensor(0.2))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=logit.expand(len(x))))


X = torch.tensor([1.0, 2.5, -0.5, 3.0], dtype=torch.float64)


def _store() -> dict:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _run(svi_class, model, guide, optim, steps, estimator="reinforce", seed=0, **options):
    """``(svi, params after each step)`` for ``steps``: a list of ``(args, kwargs)`` or
    callables ``svi -> None`` run between steps."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    elbo = DiscreteELBO(estimator, max_plate_nesting=1)
    svi = svi_class(model, guide, optim(), elbo, **options)
    trajectory = []
    for item in steps:
        if callable(item):
            item(svi)
            continue
        args, kwargs = item
        svi.step(*args, **kwargs)
        trajectory.append(_store())
    return svi, trajectory


def _assert_same(eager: list, compiled: list) -> None:
    assert len(eager) == len(compiled)
    for i, (a, b) in enumerate(zip(eager, compiled, strict=True)):
        assert set(a) == set(b), i
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-9, atol=1e-12), (i, name)


def _compare(model, guide, optim, steps, estimator="reinforce", **options):
    _, eager = _run(pyro.infer.SVI, model, guide, optim, steps, estimator)
    svi, compiled = _run(
        CompiledSVI, model, guide, optim, steps, estimator, backend="trace", **options
    )
    _assert_same(eager, compiled)
    return svi


def _adam():
    return pyro.optim.Adam({"lr": 0.05})


def test_harness_sees_a_different_trajectory():
    """The comparison fails for a run that differs (another learning rate)."""
    steps = [((X,), {})] * 5
    _, eager = _run(pyro.infer.SVI, _model, _guide, _adam, steps)
    _, other = _run(CompiledSVI, _model, _guide, lambda: pyro.optim.Adam({"lr": 0.06}), steps)
    with pytest.raises(AssertionError):
        _assert_same(eager, other)


def test_replayed_steps_match_eager_svi():
    svi = _compare(_model, _guide, _adam, [((X,), {})] * 6, estimator="nvil")
    assert svi.num_traces == 1


# ---------------------------------------------------------------------------------------
# Silent wrong results
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["reinforce", "nvil", "rebar"])
def test_non_finite_data_in_a_replayed_step_updates_nothing_and_raises(estimator):
    bad = X.clone()
    bad[2] = float("nan")
    pyro.clear_param_store()
    elbo = DiscreteELBO(estimator, max_plate_nesting=1)
    svi = CompiledSVI(_model, _guide, _adam(), elbo, backend="trace")
    for _ in range(4):
        svi.step(X)
    assert svi.num_traces == 1
    before = _store()
    with pytest.raises(NonFiniteLossError, match=r"argument 0 .*NaN|not finite"):
        float(svi.step(bad))
    after = _store()
    assert set(after) == set(before)
    for name, value in before.items():  # parameters, control variates, statistics
        assert torch.equal(after[name], value), name
    assert torch.isfinite(svi.step(X))  # and training goes on with good data
    assert svi.num_traces == 1


def test_non_finite_step_matches_eager_svi_which_refuses_it():
    bad = X.clone()
    bad[0] = float("inf")
    for svi_class in (pyro.infer.SVI, CompiledSVI):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = svi_class(_model, _guide, _adam(), DiscreteELBO(max_plate_nesting=1))
        for _ in range(3):
            svi.step(X)
        with pytest.raises(NonFiniteLossError):
            float(svi.step(bad))
        for _ in range(2):
            svi.step(X)
        if svi_class is pyro.infer.SVI:
            eager = _store()
    _assert_same([eager], [_store()])


def test_diverging_learning_rate_stops_with_a_clear_error_as_eager_svi():
    """In float32 SGD with rate 1e8 overflows on the fourth step; before, a replay went on
    with NaN parameters and stopped in a torch internal error (``p_in >= 0``)."""
    torch.set_default_dtype(torch.float32)  # restored by tests/infer/conftest.py
    outcomes = []
    for svi_class in (pyro.infer.SVI, CompiledSVI):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = svi_class(_model, _guide, pyro.optim.SGD({"lr": 1e8}), DiscreteELBO())
        failed_at = None
        for step in range(20):
            try:
                float(svi.step(X.float()))
            except NonFiniteLossError:
                failed_at = step
                break
        outcomes.append((failed_at, _store()))
    (eager_step, eager), (compiled_step, compiled) = outcomes
    assert eager_step is not None and compiled_step == eager_step
    _assert_same([eager], [compiled])


def test_data_read_from_a_global_is_refused_naming_the_line():
    data = {"x": X}

    def model():
        _model(data["x"])

    def guide():
        _guide(data["x"])

    svi = CompiledSVI(model, guide, _adam(), DiscreteELBO(max_plate_nesting=1), backend="trace")
    svi.step()
    before = _store()
    first_use = r"shape \(4,\).*test_drop_in\.py:\d+: `with pyro.plate\(\"data\", len\(x\)\)"
    with pytest.raises(CompileError, match=first_use):
        svi.step()
    # nothing updated by the refused step, and the message says how to fix it
    _assert_same([before], [_store()])
    with pytest.raises(CompileError, match="argument"):
        svi.step()


def test_tensor_attribute_of_an_argument_object_is_refused():
    def model(batch):
        _model(batch.x)

    def guide(batch):
        _guide(batch.x)

    batch = types.SimpleNamespace(x=X)
    svi = CompiledSVI(model, guide, _adam(), DiscreteELBO(max_plate_nesting=1), backend="trace")
    svi.step(batch)
    with pytest.raises(CompileError, match=r"shape \(4,\).*pass the tensor to svi.step"):
        svi.step(batch)


class _DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x.unsqueeze(-1))).squeeze(-1)


def _net_model_and_guide():
    torch.manual_seed(3)
    net = _DropoutNet().double()

    def guide(x):
        pyro.module("net", net)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=net(x)))

    def model(x):
        _model(x)

    return net, model, guide


def test_eval_mode_after_the_program_was_built_is_honoured():
    net, model, guide = _net_model_and_guide()
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def reset(svi):
        net.load_state_dict(state)
        net.train()

    def evaluate(svi):
        net.eval()

    def train(svi):
        net.train()

    steps = [reset] + [((X,), {})] * 4 + [evaluate] + [((X,), {})] * 4 + [train, ((X,), {})]
    _, eager = _run(pyro.infer.SVI, model, guide, _adam, steps)
    _, compiled = _run(CompiledSVI, model, guide, _adam, steps, backend="trace")
    _assert_same(eager, compiled)


def test_replaced_optimizer_is_used():
    def replace(svi):
        svi.optim = pyro.optim.SGD({"lr": 0.3})

    _compare(_model, _guide, _adam, [((X,), {})] * 4 + [replace] + [((X,), {})] * 4)


@pytest.mark.parametrize("change", [{"betas": (0.5, 0.6)}, {"eps": 0.5}, {"weight_decay": 0.7}])
def test_changed_optimizer_hyper_parameters_are_used(change):
    def edit(svi):
        for torch_optim in svi.optim.optim_objs.values():
            for group in torch_optim.param_groups:
                group.update(change)

    _compare(_model, _guide, _adam, [((X,), {})] * 4 + [edit] + [((X,), {})] * 4)


def _semi_supervised():
    def model(x, labelled):
        _model(x)
        scale = pyro.param("classifier", torch.tensor(1.0))
        if not labelled:
            pyro.sample("y", dist.Normal(scale, 1.0), obs=x.sum())

    return model


@pytest.mark.parametrize("order", ["unlabelled_first", "labelled_first"])
def test_parameter_without_gradient_moves_by_momentum_as_in_svi(order):
    """Adam moves a parameter with no gradient by its momentum once it has had one."""
    model = _semi_supervised()
    first, second = (False, True) if order == "unlabelled_first" else (True, False)
    steps = [((X, first), {}), ((X, second), {})] * 5
    _compare(model, _guide, _adam, steps)


def test_python_float_argument_can_be_declared_dynamic():
    def model(x, beta):
        with poutine.scale(scale=beta):
            _model(x)

    def guide(x, beta):
        with poutine.scale(scale=beta):
            _guide(x)

    steps = [((X, 0.1 * (i + 1)), {}) for i in range(8)]
    svi = _compare(model, guide, _adam, steps, dynamic_args=(1,))
    assert svi.num_traces == 1


def test_dynamic_keyword_argument():
    steps = [((X,), {"beta": 1.0 + 0.1 * i}) for i in range(6)]
    svi = _compare(_model, _guide, _adam, steps, dynamic_args=("beta",))
    assert svi.num_traces == 1


def test_a_number_that_changes_every_step_warns_and_the_memo_is_bounded():
    pyro.clear_param_store()
    svi = CompiledSVI(_model, _guide, _adam(), DiscreteELBO(max_plate_nesting=1), "trace")
    with pytest.warns(RuntimeWarning, match=r"argument 1 .*dynamic_args=\(1,\)"):
        for i in range(200):
            svi.step(X, 1.0 + i / 1000)
    assert svi.num_input_structures <= 64


# ---------------------------------------------------------------------------------------
# Refusals where users expect it to work
# ---------------------------------------------------------------------------------------


def _sequential(subsample_size=None):
    def model():
        for i in pyro.plate("plate", 4, subsample_size):
            pyro.sample(f"x_{i}", dist.Bernoulli(torch.tensor(0.5)))

    def guide():
        p = pyro.param("p", torch.tensor(0.5))
        for i in pyro.plate("plate", 4, subsample_size):
            pyro.sample(f"x_{i}", dist.Bernoulli(p))

    return model, guide


def test_sequential_plate_compiles():
    model, guide = _sequential()
    svi = _compare(model, guide, _adam, [((), {})] * 6)
    assert svi.num_traces == 1


def test_subsampled_sequential_plate_is_refused_naming_the_plate():
    model, guide = _sequential(subsample_size=2)
    pyro.clear_param_store()
    svi = CompiledSVI(model, guide, _adam(), DiscreteELBO(), backend="trace")
    svi.step()
    with pytest.raises(CompileError, match=r"plate 'plate'.*subsample"):
        svi.step()


# ---------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option,value",
    [
        ("max_programs", -1),
        ("max_programs", 0),
        ("max_programs", 1.5),
        ("check_every", -1),
        ("check_every", 0),
        ("dynamic_args", (-1,)),
        ("dynamic_args", (1.5,)),
    ],
)
def test_bad_options_are_refused_at_construction(option, value):
    with pytest.raises(ValueError, match=rf"{option}.*{value!r}"):
        CompiledSVI(_model, _guide, _adam(), DiscreteELBO(), backend="trace", **{option: value})


def test_checks_can_be_switched_off_explicitly():
    svi = CompiledSVI(_model, _guide, _adam(), DiscreteELBO(), backend="trace", check_every=None)
    for _ in range(4):
        svi.step(X)
    assert svi.num_traces == 1


def test_on_a_device_the_non_finite_step_raises_when_the_loss_is_read(monkeypatch):
    """The CUDA path (flags checked lazily), exercised on the CPU: nothing is updated by
    the bad step, and reading its loss, or a later one, raises."""
    from pyro_discrete.infer.compiled import svi as svi_module

    monkeypatch.setattr(svi_module, "HOST_CHECKED_DEVICES", ())
    bad = X.clone()
    bad[1] = float("inf")
    svi = CompiledSVI(_model, _guide, _adam(), DiscreteELBO(max_plate_nesting=1), "trace")
    for _ in range(3):
        svi.step(X)
    before = _store()
    svi.step(bad)  # no error yet: nothing was read
    _assert_same([before], [_store()])
    loss = svi.step(X)
    with pytest.raises(NonFiniteLossError, match="a step since the last check"):
        float(loss)
    float(svi.step(X))  # checked: fine again
    svi.step(bad)
    with pytest.raises(NonFiniteLossError):
        svi.check_finite()
    svi.check_finite()  # the flag was consumed


class _CentredModel(nn.Module):
    """Data centred by a buffer, and a shift kept as a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centre", torch.tensor(0.5, dtype=torch.float64))
        self.shift = torch.tensor(0.0, dtype=torch.float64)

    def model(self, x):
        _model(x - self.centre + self.shift)

    def guide(self, x):
        _guide(x - self.centre + self.shift)


def test_replaced_module_buffer_and_attribute_are_honoured():
    """Tensors the model's module holds are guarded: replacing one records the step again."""
    net = _CentredModel()

    def reset(svi):
        net.centre = torch.tensor(0.5, dtype=torch.float64)
        net.shift = torch.tensor(0.0, dtype=torch.float64)

    def replace_buffer(svi):
        net.centre = torch.tensor(-3.0, dtype=torch.float64)

    def replace_attribute(svi):
        net.shift = torch.tensor(7.0, dtype=torch.float64)

    step = ((X,), {})
    steps = [reset, *[step] * 4, replace_buffer, *[step] * 3, replace_attribute, *[step] * 3]
    svi = _compare(net.model, net.guide, _adam, steps)
    assert svi.num_traces == 3
