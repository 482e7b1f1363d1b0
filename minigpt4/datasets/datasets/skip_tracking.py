"""Bookkeeping for the samples and shards a stream skips, kept per loader worker.

A long stage-1 run meets the odd corrupt image; it must neither die of one nor spin forever on
data that gives nothing. ``SkipTracker`` counts what a stream skips and decides when to stop:

* warnings are rate-limited: the first ``WARN_FIRST`` skips are named one by one, after that one
  line every ``WARN_EVERY_S`` seconds gives the count and the shards they came from;
* the share of skipped samples among those judged (skipped or handed out) while the last
  ``WINDOW_SHARDS`` shards were read, above ``run.max_skip_fraction``, stops the stream
  (``SkipFractionError``); a window of shards, not of samples, so that one bad shard among many
  good ones is survived whatever the shard size;
* ``MAX_UNUSABLE_SHARDS_IN_A_ROW`` shards in a row that give no sample at all (empty tars,
  unreadable files, a failing ``pipe:`` command) stop it (``ShardStreamError``).

The skips since the last sample a stream handed out are attached to the next one
(``take_unreported``), so that the counts travel to the training process inside the batches.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from minigpt4.common.errors import MiniGPT4Error

logger = logging.getLogger(__name__)

WARN_FIRST = 5
WARN_EVERY_S = 60.0
WINDOW_SHARDS = 20
MAX_UNUSABLE_SHARDS_IN_A_ROW = 100
NAMED_IN_ERRORS = 3  # shards named in a stop message


class ShardStreamError(MiniGPT4Error, RuntimeError):
    """Shard after shard gave no sample: the stream would spin without end."""


class SkipFractionError(MiniGPT4Error, RuntimeError):
    """More of the samples read were skipped than ``run.max_skip_fraction`` allows."""


def _top(where: Counter, details: dict, n: int = NAMED_IN_ERRORS) -> str:
    """``shard (count x kind: detail), ...`` for the ``n`` most frequent (shard, kind) pairs."""
    parts = [f"{url} ({count} x {kind}: {details[url, kind]})" for (url, kind), count in where.most_common(n)]
    if len(where) > n:
        parts.append(f"and {len(where) - n} more")
    return ", ".join(parts)


class SkipTracker:
    """Skips of the stream ``name``; ``max_fraction`` is ``run.max_skip_fraction`` (1.0: never
    stop for the share of skips). ``clock`` gives seconds (monotonic) for the warning interval."""

    def __init__(self, name: str, max_fraction: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.max_fraction = max_fraction
        self.clock = clock
        self.total = 0  # skipped since the stream began
        self.unreported = 0  # skipped since the last sample handed out
        self.named = 0  # skips warned about one by one
        self.held = Counter()  # (shard, kind) -> skips not yet in a warning
        self.last_warning = clock()
        self.window_shards = 0
        self.window_kept = 0
        self.window_skipped = 0
        self.window_where: Counter = Counter()
        self.details: dict[tuple[str, str], str] = {}  # the last detail of each (shard, kind)
        self.unusable: list[tuple[str, str]] = []  # (shard, why) of the shards in a row with no sample
        self.named_shards: set[str] = set()  # shards without samples warned about by name

    def skip(self, url: str | None, key: str | None, kind: str, detail: str) -> None:
        """One sample ``key`` of shard ``url`` skipped: ``kind`` is a short category ("corrupt
        image"), ``detail`` what was wrong with this one."""
        url = str(url)
        self.total += 1
        self.unreported += 1
        self.window_skipped += 1
        self.window_where[url, kind] += 1
        self.details[url, kind] = detail
        if self.named < WARN_FIRST:
            self.named += 1
            more = "; later skips are counted, one warning a minute" if self.named == WARN_FIRST else ""
            logger.warning("%s: skipped sample '%s' of %s: %s (%s)%s", self.name, key, url, kind, detail, more)
            self.last_warning = self.clock()
            return
        self.held[url, kind] += 1
        self.warn_held()

    def warn_held(self, force: bool = False) -> None:
        """The held-back skips in one line, once ``WARN_EVERY_S`` has passed since the last one."""
        now = self.clock()
        if not self.held or (not force and now - self.last_warning < WARN_EVERY_S):
            return
        logger.warning(
            "%s: %d more samples skipped in the last %.0f s (%d since the start), from %s",
            self.name,
            sum(self.held.values()),
            now - self.last_warning,
            self.total,
            _top(self.held, self.details),
        )
        self.held.clear()
        self.last_warning = now

    def take_unreported(self) -> int:
        """The skips since the previous call, for the sample about to be handed out."""
        self.window_kept += 1
        count, self.unreported = self.unreported, 0
        return count

    def shard_done(self, url: str, samples: int, problem: str | None) -> None:
        """Shard ``url`` was read to its end and gave ``samples`` samples; ``problem`` says what went
        wrong reading it (None: nothing). Raises when the stream cannot go on."""
        if samples:
            self.unusable.clear()
        else:
            why = problem or "an empty tar (no samples)"
            self.unusable.append((url, why))
            if len(self.unusable) >= MAX_UNUSABLE_SHARDS_IN_A_ROW:
                reasons = Counter(self.unusable)
                named = ", ".join(f"{u} ({w})" for (u, w), _ in reasons.most_common(NAMED_IN_ERRORS))
                more = f" and {len(reasons) - NAMED_IN_ERRORS} more" if len(reasons) > NAMED_IN_ERRORS else ""
                raise ShardStreamError(
                    f"{self.name}: {len(self.unusable)} shards read in a row gave no sample: {named}{more}. "
                    "Remove or replace them (dataset/check_data.py lists every bad shard)"
                )
            self.skip_shard(url, why)
        self.window_shards += 1
        if self.window_shards >= WINDOW_SHARDS:
            self.close_window()

    def skip_shard(self, url: str, why: str) -> None:
        self.details[url, "shard without samples"] = why
        if self.named < WARN_FIRST and url not in self.named_shards:
            self.named += 1
            self.named_shards.add(url)
            logger.warning("%s: shard %s gave no sample: %s", self.name, url, why)
            self.last_warning = self.clock()
            return
        self.held[url, "shard without samples"] += 1
        self.warn_held()

    def close_window(self) -> None:
        judged, skipped = self.window_kept + self.window_skipped, self.window_skipped
        if judged and skipped / judged > self.max_fraction:
            raise SkipFractionError(
                f"{self.name}: {skipped} of {judged} samples were skipped while the last {self.window_shards} shards "
                f"were read ({skipped / judged:.0%}, above run.max_skip_fraction {self.max_fraction:g}); most from "
                f"{_top(self.window_where, self.details)}. Check the shards with dataset/check_data.py"
            )
        self.window_shards = self.window_kept = self.window_skipped = 0
        self.window_where.clear()
