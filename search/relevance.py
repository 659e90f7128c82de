"""A relevance in [0, 1] beside the cosine, meant to be thresholded.

Raw CLIP cosines are not comparable across queries: one query's best match may score 0.22 and another's
worst 0.25. Each query's cosine is therefore placed against that query's own cosine distribution over a
fixed reference sample of stored instances (up to 1,024 vectors drawn with a fixed seed;
``Store.reference_vectors``)::

    relevance(s) = Phi((s - mu_q) / sigma_q)

with ``mu_q``, ``sigma_q`` the mean and standard deviation of the query's cosines over the sample and Phi
the standard normal CDF. It reads "how far above a typical instance this one is, for this query": 0.5 is
an average instance, 0.99 is about 2.3 standard deviations above the average (for a normal fit, 1 in 100
instances). It is a strictly increasing function of the cosine within one query, so it never reorders hits,
and it means the same for every query and every collection large enough for the sample to be
representative; with fewer than :data:`MIN_REFERENCE` stored vectors there is no calibration and relevance
is None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

__all__ = ["MIN_REFERENCE", "REFERENCE_SIZE", "Calibration"]

#: Reference vectors sampled from the store.
REFERENCE_SIZE = 1024
#: Fewer stored vectors than this give no calibration (relevance None).
MIN_REFERENCE = 8


@dataclass(frozen=True)
class Calibration:
    """One query's calibration: ``relevance(s) = Phi((s - mean) / std)``."""

    mean: float
    std: float

    @classmethod
    def for_query(cls, query: np.ndarray, reference: np.ndarray) -> "Calibration | None":
        """From the (D,) unit query and the (m, D) reference vectors; None when m < MIN_REFERENCE."""
        if reference.shape[0] < MIN_REFERENCE:
            return None
        s = reference.astype(np.float32) @ np.asarray(query, np.float32)
        return cls(float(s.mean()), max(float(s.std()), 1e-6))

    def __call__(self, scores: np.ndarray | float) -> np.ndarray:
        return ndtr((np.asarray(scores, np.float64) - self.mean) / self.std)
