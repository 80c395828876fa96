"""What a sharded search raises when something goes wrong on some rank, and on which.

Three kinds, each raised on every rank at once (never on one rank while the
others wait):

- `RankFailure`: a rank raised while computing (bad input, a corrupt
  shard, a bug). Every step of local work ends in one tiny all-reduce of an
  error flag (`Comm.step`), so the others learn of it at once and all raise
  it, naming the failing ranks and their errors. When every failing rank
  raised a `ValueError` (or every one a `TypeError`) it is also one
  (`RankValueError`, `RankTypeError`), so bad input still reads as DESIGN §5
  says: `except ValueError` works as with the single-process head.
- `CollectiveError`: a collective itself failed: it ran past the process
  group's timeout (a rank stuck or gone) or its peer's connection closed
  (a rank died).
- `ShardMismatch`: the shards do not make one gallery (another encoder,
  dimension, region count, format version); refused at start-up.
"""

from __future__ import annotations


def describe(error: BaseException) -> str:
    """`"TypeName: message"` of an exception, as the other ranks are told it."""
    return f"{type(error).__name__}: {error}"


class RankFailure(RuntimeError):
    """One or more ranks raised during step `step`; raised on every rank.

    Attributes:
        step: the step of the search that failed ("validate", "first_stage", "rerank", ...).
        failures: rank -> "TypeName: message" of each failing rank.
        world_size: ranks in the group.
    """

    def __init__(self, step: str, failures: dict[int, str], world_size: int) -> None:
        self.step = step
        self.failures = dict(sorted(failures.items()))
        self.world_size = world_size
        ranks = list(self.failures)
        messages = set(self.failures.values())
        if len(ranks) == world_size and len(messages) == 1:
            where = f"on every rank ({world_size} of {world_size}): {messages.pop()}"
        elif len(ranks) == 1:
            where = f"on rank {ranks[0]} of {world_size}: {self.failures[ranks[0]]}"
        else:
            where = f"on ranks {', '.join(map(str, ranks))} of {world_size}: " + "; ".join(
                f"rank {r}: {m}" for r, m in self.failures.items())
        super().__init__(f"sharded search failed in step {step!r} {where} (every rank stopped)")


class RankValueError(RankFailure, ValueError):
    """A `RankFailure` where every failing rank raised a `ValueError` (bad input, a bad shard)."""


class RankTypeError(RankFailure, TypeError):
    """A `RankFailure` where every failing rank raised a `TypeError`."""


def rank_failure(step: str, failures: dict[int, tuple[str, str]], world_size: int) -> RankFailure:
    """The `RankFailure` (or its ValueError / TypeError kind) for `failures`: rank -> (kind, description).

    `kind` is "ValueError", "TypeError" or "" for any other exception.
    """
    kinds = {kind for kind, _ in failures.values()}
    cls = {"ValueError": RankValueError, "TypeError": RankTypeError}.get(kinds.pop(), RankFailure) if len(kinds) == 1 else RankFailure
    return cls(step, {r: text for r, (_, text) in failures.items()}, world_size)


def error_kind(error: BaseException) -> str:
    """"ValueError" / "TypeError" when `error` is one (a subclass counts), else ""."""
    if isinstance(error, ValueError):
        return "ValueError"
    if isinstance(error, TypeError):
        return "TypeError"
    return ""


class CollectiveError(RuntimeError):
    """A collective failed or timed out on this rank (a peer stuck past the timeout, or gone).

    Attributes:
        op: the collective ("all_gather", "all_to_all", ...).
        step: the step of the search it served.
        rank: this rank.
        timeout_s: the process group's timeout in seconds (None if unknown).
    """

    def __init__(self, op: str, step: str, rank: int, timeout_s: float | None, cause: BaseException) -> None:
        self.op, self.step, self.rank, self.timeout_s = op, step, rank, timeout_s
        limit = f"{timeout_s:g} s" if timeout_s is not None else "the process group's"
        super().__init__(
            f"collective {op} (step {step!r}) failed on rank {rank}: {describe(cause)}. Another rank is stuck past "
            f"the {limit} timeout or has died; restart every rank (the process group is unusable now)"
        )


class ShardMismatch(ValueError):
    """The ranks' shards do not make one gallery; raised on every rank at start-up.

    Attributes:
        field: what differs ("encoder", "dim", "version", ...).
        values: rank -> that rank's value.
    """

    def __init__(self, field: str, values: dict[int, object], where: dict[int, str] | None = None, hint: str = "") -> None:
        self.field = field
        self.values = dict(values)
        first = min(values)
        odd = [r for r, v in values.items() if v != values[first]]

        def name(r: int) -> str:
            return f"rank {r}" + (f" ({where[r]!r})" if where and r in where else "")

        detail = "; ".join(f"{name(r)} has {values[r]!r}" for r in odd)
        super().__init__(
            f"the shards disagree on {field}: {name(first)} has {values[first]!r}; {detail}. "
            f"Every shard of one gallery must match{': ' + hint if hint else ''}"
        )
