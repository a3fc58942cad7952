"""Command-line tools: convert, extract, export."""
