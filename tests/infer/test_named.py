"""The named ELBO classes: one per registered estimator, written out in ``infer/named.py``."""

import ast
import inspect

import pytest

import pyro_discrete.infer as infer
from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, NamedELBO
from pyro_discrete.infer import named as named_module
from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES as REGISTERED

#: the package's own adapters (a test elsewhere may register one of its own)
ESTIMATOR_CLASSES = {
    name: cls for name, cls in REGISTERED.items() if cls.__module__.startswith("pyro_discrete.")
}


def test_every_estimator_has_exactly_one_named_class():
    names = [cls.estimator_name for cls in NamedELBO.__subclasses__()]
    assert sorted(names) == sorted(ESTIMATOR_CLASSES)
    assert len(names) == len(set(names))
    assert set(ESTIMATORS) == set(ESTIMATOR_CLASSES)


def test_named_classes_are_written_out_for_ides():
    # statically visible: a class statement in the module and a name in the package's
    # __all__, not made at import time
    tree = ast.parse(inspect.getsource(named_module))
    written = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    for cls in ESTIMATORS.values():
        assert cls.__name__ in written
        assert cls.__name__ in infer.__all__
        assert getattr(infer, cls.__name__) is cls


@pytest.mark.parametrize("name", sorted(ESTIMATOR_CLASSES))
def test_named_class_is_the_estimator(name):
    cls = ESTIMATORS[name]
    adapter = ESTIMATOR_CLASSES[name]
    elbo = cls()
    assert isinstance(elbo, DiscreteELBO)
    assert isinstance(elbo.estimator, adapter)
    assert elbo.num_particles == (2 if adapter.multi_sample else 1)
    assert inspect.cleandoc(adapter.__doc__).splitlines()[0] in cls.__doc__
    for option in adapter.defaults:
        assert f"``{option}``" in cls.__doc__


def test_named_class_passes_options_and_particles():
    elbo = infer.RLOO_ELBO(num_particles=5, check_finite=False)
    assert elbo.num_particles == 5 and elbo.vectorize_particles and not elbo.check_finite
    elbo = infer.REBAR_ELBO(temperature=0.3)
    assert elbo.estimator.options["temperature"] == 0.3
