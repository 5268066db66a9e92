"""Summaries of per-episode results."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AccuracySummary:
  """Mean accuracy and the 95% confidence interval over episodes.

  Attributes:
    accuracy: mean over episodes of each episode's query accuracy (a fraction).
    ci95: half-width of the normal-approximation 95% interval of that mean,
      `1.96 * std(ddof=1) / sqrt(episodes)`, over episodes (never over batch
      means, which understates the interval).
    episodes: the number of episodes.
  """

  accuracy: float
  ci95: float
  episodes: int

  def __str__(self) -> str:
    return f'{100 * self.accuracy:.2f} +- {100 * self.ci95:.2f}% ({self.episodes} episodes)'


def summarize(episode_accuracies) -> AccuracySummary:
  """Summarises a vector of per-episode accuracies."""
  acc = np.asarray(episode_accuracies, np.float64).reshape(-1)
  if acc.size == 0:
    raise ValueError('No episodes to summarise.')
  std = acc.std(ddof=1) if acc.size > 1 else 0.0
  return AccuracySummary(float(acc.mean()), float(1.96 * std / np.sqrt(acc.size)), int(acc.size))
