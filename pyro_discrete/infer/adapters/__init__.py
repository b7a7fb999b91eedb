"""Site estimators, one module per estimator family (being moved here from
:mod:`pyro_discrete.infer.site_estimators`)."""
