"""Data set files: loading, format detection, records as chat turns, and the check run before a
launch. No tokenizer, no torch; imported by launch (to check before starting) and by train."""
