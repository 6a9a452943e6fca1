"""The bottom layer: what the app services (backend/) and the pipeline stages (pipeline/) both
need, and nothing that knows about either: settings and workspace paths, the Python environments,
atomic file writes, the app database connection, the model-folder check, GPU facts, the recipe
answer format and corpus reading. Modules here import only the standard library, third-party
libraries and each other (pyproject.toml's import-linter contracts check it); the training and
evaluation environments import some of them too (model_folder), so they stay light.
"""
