"""Figures, brain maps, galleries and tables."""
