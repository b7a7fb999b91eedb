"""pyro_discrete: gradient estimators for discrete latent variables in Pyro.

Pass one argument to :class:`pyro_discrete.infer.DiscreteELBO` and train models with
Bernoulli, categorical and one-hot categorical latents inside :class:`pyro.infer.SVI`.
"""

__version__ = "0.1.0"
