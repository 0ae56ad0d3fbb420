"""Jobs: whole runs assembled from a config, above the evaluation packages and below compare/ and
the CLI. ``facelt.jobs.train`` trains the stages of a recipe (run lock, validation, verification
during training); ``facelt.jobs.demo`` is ``facelt demo``'s pipeline and ``facelt.jobs.demo_report``
its report. Only jobs/ and cli/ import ``pipelines`` and ``eval_megaface``."""
