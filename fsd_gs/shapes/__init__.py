"""The shapes world: procedural 3D objects made of Gaussians, their captions, rendered training batches,
the judge classifier and the built-in prior's networks (see fsd_gs/prior/shapes.py for loading it)."""
