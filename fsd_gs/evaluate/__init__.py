"""`python -m fsd_gs.evaluate PATH ...`: measure what FSD promises -- diversity at equal quality.

Modules, in the order data flows:
  runs.py        find run folders / batch manifests, group runs by (prompt, method, model)
  views.py       the fixed evaluation cameras; views of assets, of the shapes world's objects, DDIM samples
  scorers.py     quality, IS probabilities and features per view (the shapes judge, or CLIP)
  metrics.py     FID / CROSS-FID, IS, colour entropy, pairwise distances (pure functions)
  consistency.py 3D consistency from per-view reads: view accuracy on the clear cameras, Janus flag, confusion
  report.py      results as data, the paper's table (markdown) and JSON
  gallery.py     the HTML gallery of animated turntables
  evaluation.py  the pipeline (EvaluateConfig -> evaluate)
  __main__.py    the command line
"""
