"""The benchmark harness and its report: the FetalCLIP table for any set of models, with figures.

- ``tasks``: the task registry (name -> data key, table column, task function) and the figure-only tasks.
- ``harness``: ``run_benchmark`` (resumable, fingerprinted results) and model/data argument parsing.
- ``results``: the per-(model, task) results store that makes runs resumable.
- ``report``: ``results.json``, ``results.csv``, ``results.md`` and the self-contained ``report.html``.
- ``figures``: matplotlib figures as PNG bytes.
- ``baselines``: open_clip models (CLIP, BiomedCLIP, ...) from local weights behind our model interface.
"""
