"""Diffusion priors behind one interface (:class:`fsd_gs.prior.base.DiffusionPrior`)."""
