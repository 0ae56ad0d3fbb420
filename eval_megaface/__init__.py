"""MegaFace challenge-1 identification from feature files (FaceScrub probes vs up to 1M distractors).

Feature files (stacked ``.npy``, resumable extraction) live in the engine: :mod:`facelt.features.files`.

Modules, one job each:

- :mod:`eval_megaface.devkit`       the devkit's per-image ``.bin`` files and the ``.bin`` <-> ``.npy`` converter
- :mod:`eval_megaface.probes`       the probe list CSV (``path,identity[,attribute...]``)
- :mod:`eval_megaface.noise`        the public noise lists (refined protocol)
- :mod:`eval_megaface.search`       streamed exact top-k distractor search; approximate faiss indexes
- :mod:`eval_megaface.protocol`     gallery sizes and subsets, trials, CMC, attribute groups
- :mod:`eval_megaface.pseudo_shots` training-neighbour counts and the many/few/one/zero buckets
- :mod:`eval_megaface.evaluate`     one evaluation, files in, report dictionary out
- :mod:`eval_megaface.report`       ``report.json``, ``report.md`` and the PNG charts
"""
