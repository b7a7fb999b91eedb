"""Estimator math as pure tensor functions, free of Pyro trace code.

Each module holds one estimator family: the formula in its docstring, the tensors in and
out. :mod:`pyro_discrete.infer` composes them with the model and guide.
"""

from pyro_discrete.estimators.arm import (
    antithetic_uniform,
    arm_logit_gradient,
    disarm_logit_gradient,
)
from pyro_discrete.estimators.decoupled_st import decoupled_st_logit_gradient
from pyro_discrete.estimators.double_cv import double_cv_logit_gradient, leave_one_out_mean
from pyro_discrete.estimators.expectation_model import (
    expectation_model_loss,
    expectation_model_surrogate,
    score_function_logit_gradient,
)
from pyro_discrete.estimators.indecater import (
    indecater_changed_indices,
    indecater_gradient,
    indecater_logit_gradient,
    indecater_surrogate,
    indecater_value_table,
)
from pyro_discrete.estimators.lax import lax_parameter_gradients
from pyro_discrete.estimators.muprop import muprop_surrogate, muprop_taylor_term
from pyro_discrete.estimators.nvil import nvil_baseline_loss, nvil_signal, nvil_update_statistics
from pyro_discrete.estimators.rebar import rebar_logit_gradient
from pyro_discrete.estimators.reinforce import decaying_average, logit_score, score_surrogate
from pyro_discrete.estimators.reinmax import reinmax_logit_gradient
from pyro_discrete.estimators.reinmax_cv import (
    expected_reinmax_product,
    reinmax_cv_correction,
    reinmax_cv_logit_gradient,
)
from pyro_discrete.estimators.reinmax_rao import (
    conditional_jacobian_logit_gradient,
    heun_midpoints,
    reinmax_rao_logit_gradient,
    shifted_logits,
)
from pyro_discrete.estimators.relax import (
    gradient_variance_loss,
    relax_logit_gradient,
    relax_logit_gradients,
)
from pyro_discrete.estimators.rloo import leave_one_out_signal
from pyro_discrete.estimators.rodeo import gibbs_stein, gibbs_stein_score, rodeo_logit_gradient
from pyro_discrete.estimators.unordered_set import (
    event_without_replacement,
    gumbel_top_k,
    stochastic_beam_search,
    unordered_set_baseline,
    unordered_set_log_probs,
    unordered_set_surrogate,
    unordered_set_weights,
)
from pyro_discrete.estimators.vimco import vimco_bound_and_signals, vimco_surrogate

__all__ = [
    "antithetic_uniform",
    "arm_logit_gradient",
    "decaying_average",
    "decoupled_st_logit_gradient",
    "disarm_logit_gradient",
    "double_cv_logit_gradient",
    "expectation_model_loss",
    "expectation_model_surrogate",
    "gibbs_stein",
    "gibbs_stein_score",
    "gradient_variance_loss",
    "lax_parameter_gradients",
    "conditional_jacobian_logit_gradient",
    "heun_midpoints",
    "indecater_changed_indices",
    "indecater_gradient",
    "indecater_logit_gradient",
    "indecater_surrogate",
    "indecater_value_table",
    "leave_one_out_mean",
    "leave_one_out_signal",
    "logit_score",
    "muprop_surrogate",
    "muprop_taylor_term",
    "nvil_baseline_loss",
    "nvil_signal",
    "nvil_update_statistics",
    "rebar_logit_gradient",
    "reinmax_cv_correction",
    "reinmax_cv_logit_gradient",
    "reinmax_logit_gradient",
    "reinmax_rao_logit_gradient",
    "shifted_logits",
    "relax_logit_gradient",
    "relax_logit_gradients",
    "rodeo_logit_gradient",
    "score_function_logit_gradient",
    "score_surrogate",
    "event_without_replacement",
    "expected_reinmax_product",
    "gumbel_top_k",
    "stochastic_beam_search",
    "unordered_set_baseline",
    "unordered_set_log_probs",
    "unordered_set_surrogate",
    "unordered_set_weights",
    "vimco_bound_and_signals",
    "vimco_surrogate",
]
