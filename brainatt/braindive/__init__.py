"""BrainDiVE: brain-guided diffusion toward a subject's ROI, through the saved encoders."""
