"""The training release: what a trainer receives, built from the pipelines' published datasets.

Along the data flow, one module each (pure functions over Arrow tables; the side effects are in
:mod:`infinisynth.pipelines.release` and :mod:`.export`):

- :mod:`.rows`: every pipeline's dataset rows in one release schema (the candidates);
- :mod:`.dedup`: exact, near (MinHash LSH) and semantic (embedding nearest neighbours, usearch)
  duplicates, within the release and against every other release's index;
- :mod:`.benchmarks`, :mod:`.decontaminate`: evaluation benchmarks (HumanEval built in, the user's
  files) and the screen against them (word 13-grams, embedding similarity);
- :mod:`.variants`: the ablation exports (quality thresholds, reverse/backfeed mixes, lint strictness);
- :mod:`.export`, :mod:`.card`, :mod:`.sft_config`: the Hugging Face dataset folder, its card and
  the TRL SFT config.
"""
