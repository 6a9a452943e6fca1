"""What OpenCompass imports from the project, inside the eval environment.

- ``metrics``: ingredient names and ingredient recall (stdlib only; the app imports it too).
- ``models``: model config dicts (HuggingFace everywhere, TurboMind on a GPU), plain dicts.
- ``recipe_bench``: the recipe benchmark (dataset loader, evaluators, dataset config);
  imports OpenCompass, so only the eval environment loads it.

``pipeline.evaluate`` writes a config file that imports these, and runs OpenCompass with the
project root on ``PYTHONPATH`` so that OpenCompass's task subprocesses find them too.
"""
