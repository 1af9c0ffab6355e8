"""The simulations, one module per study (named in :mod:`sims.registry`)."""
