"""bucketzip's benchmark harness: ``python -m bench`` (see README.md). Not part of the installed package."""
