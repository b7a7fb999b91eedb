"""Site estimators, one module per estimator family (see :mod:`pyro_discrete.infer.site_estimators`
for the base class and the registry)."""
