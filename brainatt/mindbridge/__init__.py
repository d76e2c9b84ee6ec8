"""MindBridge-style cross-subject decoding: one model for many subjects, reset-tuning to a new one.

`data` (per-subject trials and CLIP targets), `model` (aggregation, per-subject embedder and builder, shared
translator and heads, the losses), `train` (the regimes), `evaluate` (retrieval, two-way identification) and
`recon` (reconstructions from predicted embeddings).
"""
