"""The files stages exchange, as code: one typed writer and one validating reader per file contract.

- `responses`: ``results/prep/{subject}/responses.h5``;
- `stimuli`: ``results/stimuli/images.h5``;
- `features`: ``results/features/…h5``;
- `candidates`: ``results/scuba/candidates/…h5`` (BrainSCUBA's candidate CLIP embeddings);
- `encoding`: ``results/encoding/{subject}/{encoder}/``.

Every stage reads and writes these files through this package only; a reader turns anything malformed into one
`BrainattError` line naming the file and the fix. Nothing here imports torch or a stage.
"""
