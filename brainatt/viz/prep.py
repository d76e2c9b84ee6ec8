"""Preprocessing summary: one table row per subject and the noise-ceiling distributions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from brainatt.contracts.responses import WARNING_KINDS, read_responses
from brainatt.io import atomic_path


def prep_summary(responses: list[str | Path], table: str | Path, figure: str | Path) -> pd.DataFrame:
    rows, ncs = [], {}
    for path in responses:
        r = read_responses(path, betas=False)
        nc = r.voxels.nc_test
        ncs[r.subject] = nc
        rows.append(
            {
                "subject": r.subject,
                "n_voxels": nc.size,
                "n_train": len(r.train.nsd_ids),
                "n_test": len(r.test.nsd_ids),
                "n_trials": len(r.trial_session),
                "n_sessions": len(np.unique(r.trial_session)),  # 0 for Algonauts (no single trials)
                "median_ncsnr": float(np.nanmedian(r.voxels.ncsnr)),  # NaN where ncsnr is unknown
                "median_nc_test_pct": float(np.nanmedian(nc)),
                "frac_nc_ge_5pct": float(np.mean(nc >= 5)),
                # warnings of the preprocessing, counted (NA: written before they were counted)
                **{k: r.warnings.get(k, pd.NA) for k in WARNING_KINDS},
            }
        )
    df = pd.DataFrame(rows)
    with atomic_path(table) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    bins = np.linspace(0, 100, 41)
    for subject, nc in ncs.items():
        ax.hist(nc[np.isfinite(nc)], bins=bins, histtype="step", label=subject)
    ax.set(xlabel="noise ceiling of test responses (% variance)", ylabel="voxels")
    ax.legend(frameon=False)
    with atomic_path(figure) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(figure).suffix.lstrip("."))
    plt.close(fig)
    return df
