"""Format versions of what the trainers write, read by cache keys and by the study fingerprint.

A module of its own because the orchestrator and `hpo status` read them: importing ``trainers.data`` or
``trainers.generation`` for two integers would import torch (~1.5 s of CPU per command).
"""

CACHE_VERSION = 2  # bump when the on-disk layout or the tokenisation changes (2: shuffled eval order)
# Bump when the token layout of pairs changes (in the cache key of generation runs and, for pretrained
# tokenizers, the study fingerprint). 2: the tokenizer's own special tokens (BOS of BART, Llama).
PAIRS_VERSION = 2
