"""Readers for NSD-style datasets: NSD's own layout and the Algonauts-2023 layout."""
