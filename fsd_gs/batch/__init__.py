"""Many prompts x presets x seeds in one command: ``python -m fsd_gs.batch`` (docs/batch.md).

grid.py      prompts, seeds, presets -> items -> work units (K seeds together) -> shards; pure functions
manifest.py  manifest.json (fsd_gs.batch/1, read by fsd_gs.evaluate), summary.md, events.jsonl
worker.py    AssetWorker: trains units in one process, caching loaded priors; bad items become results
engine.py    where units run: LocalEngine (this process) or RayEngine (long-lived actors)
driver.py    the scheduling loop: skip done, resubmit lost units, record results, stop cleanly on Ctrl-C
progress.py  tqdm on a terminal, plain lines otherwise
cli.py       the command line
"""
