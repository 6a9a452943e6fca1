"""Pipeline stages: data preparation and the XTuner / LMDeploy / OpenCompass wrappers.

Modules here build argument lists and config files and parse outputs; they never import
xtuner or opencompass (those live in their own virtual environments, see pipeline/envs/).
"""
