"""Each transaction's deciding outcome report, by the rule the server's feature state follows
(`service.core.label_conflicts`): of its reports, the one of the highest-ranked caller,
the latest among equals.

Every report is in the logs, each with its caller's rank as the server received it
(`caller_rank`; 0 on lines written before ranks). The ranks are the recorded ones, not
today's settings: a retrain resolves a conflict as the state did when the reports came, and
a rank changed since applies to the reports received after the change, here as there.

Most transactions have one report; only those with several go through the rule, a
transaction at a time, so the cost follows the conflicts, not the log.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from service.core.label_conflicts import deciding_report


def deciding_reports(reports: pd.DataFrame) -> pd.DataFrame:
    """One row per transaction of `reports` (outcome rows in report order: report time,
    then log order): its deciding report. Rows come in no particular order."""
    repeated = reports["transaction_id"].duplicated(keep=False).to_numpy()
    if not repeated.any():
        return reports
    contested = reports.iloc[np.flatnonzero(repeated)]
    ranks = contested["caller_rank"].to_numpy()
    groups = contested.groupby("transaction_id", sort=False).indices.values()
    chosen = [rows[deciding_report(ranks[rows].tolist())] for rows in groups]
    return pd.concat([reports.iloc[np.flatnonzero(~repeated)], contested.iloc[chosen]])
