"""Which files of a model directory (or Hub repo) a run uses: one list for the launch's checks, the
Hub download and the export."""

from __future__ import annotations

TOKENIZER_VOCAB = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
"""One of these makes a tokenizer (the rest below only configure it)."""
TOKENIZER_FILES = (
    *TOKENIZER_VOCAB,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
CONFIG_FILES = ("config.json", "generation_config.json")
SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
PYTORCH_BIN = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
