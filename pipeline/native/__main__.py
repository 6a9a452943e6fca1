"""python -m pipeline.native: build the compiled converter now (scripts/setup-env.sh), or say why not."""
from pipeline import native

print(f"fast converter: {native.library_path()}" if native.load() is not None else native.why_not())
