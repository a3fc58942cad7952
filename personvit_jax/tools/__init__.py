"""Command-line tools around the pipeline: weight conversion, feature extraction, export."""
