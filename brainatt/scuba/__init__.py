"""BrainSCUBA: per-voxel CLIP encoders, projection onto natural-image embeddings, a caption for every voxel."""
