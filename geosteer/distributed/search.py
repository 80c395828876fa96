"""Command-line sharded search: one rank per shard, launched by torchrun.

    python -m torch.distributed.run --nproc-per-node 2 -m geosteer.distributed.search INDEX "a red circle" -k 5

INDEX is a sharded index (a folder holding `shards.json`, one shard per
rank: `geosteer.distributed.write_sharded_index`, or `write_shard_list`
over folders `geosteer index` built), or one index folder, whose rows the
ranks split. Rank 0 encodes the captions with the model the first shard's
manifest records (`Index.load_encoder`; or reads `--queries-file`, a
`torch.save`d dict of `QuerySide` fields), broadcasts them, and prints what
`ShardedHead` returns: the same ranking `geosteer search` prints for the
whole gallery, and with --json the same JSON form (`SearchResult.to_dict()`;
paths are the image files). `--where FILTER` searches a subset, with
`geosteer search`'s expressions (`geosteer.index.search.where_mask`; each
rank evaluates them on its own rows, `ShardedGallery.where`, and passes its
slice as `ShardedHead`'s `allowed`). Without torchrun it runs as one rank.
Exit status: 0, 1 for a failed search (every rank reports it), 2 for bad
arguments (argparse's error naming the argument: -k, --threads and
--timeout must be positive, --timeout finite too; checked before the
process group starts) and for a --where that is malformed or selects no
image (found once the shards are open: every rank prints it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from geosteer.config import PRESETS, get_config
from geosteer.distributed.comm import DEFAULT_TIMEOUT_S, init_distributed
from geosteer.distributed.faults import CollectiveError, RankFailure, RankTypeError, ShardMismatch
from geosteer.distributed.head import ShardedHead
from geosteer.distributed.shard import ShardedGallery, shard_folders
from geosteer.index import Index, Indexer, head_k, query_side, search_result
from geosteer.inputs import QuerySide

PROG = "python -m torch.distributed.run --nproc-per-node N -m geosteer.distributed.search"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse prints the error naming the argument, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number > 0 (`init_distributed` would raise a ValueError mid-start on 0 or nan)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def printable(text: str) -> str:
    """`text` with bytes that were not UTF-8 (a file name's, kept as lone surrogates by os.fsdecode) shown as \\xNN.

    The same as `geosteer.commands.args.printable`, which a library module
    may not import (tests/test_layers.py).
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte: show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("index", metavar="INDEX", help="sharded index folder (shards.json) or one index folder")
    p.add_argument("queries", metavar="QUERY", nargs="*", help="captions to search for")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default: %(default)s)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="head preset (default: %(default)s)")
    p.add_argument("--queries-file", default=None, metavar="Q.pt",
                   help="torch.save'd dict of QuerySide fields (embeddings, parts, ...) instead of captions")
    p.add_argument("--model", default=None, help="text encoder (default: the one the index records)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint of --model")
    p.add_argument("--faiss", default=None, choices=("ivf", "hnsw", "flat"), help="first stage: a FAISS index per shard")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads per rank")
    p.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT_S,
                   help="collective timeout, s (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--where", action="append", default=None, metavar="FILTER",
                   help="search only these images, as geosteer search --where: 'path:GLOB' (fnmatch on the path "
                   "each shard's index records), 'path:PREFIX/', 'id:3,5-9' (global row ids). Repeat it or join "
                   "clauses with '&': all must hold. Fewer matching images than -k give fewer results")
    return p


def load_queries(args: argparse.Namespace, folder) -> tuple[list[str] | None, list[list[str]], QuerySide]:
    """What rank 0 searches: `--queries-file`, or the captions encoded with the model index `folder` records.

    Returns:
        As `geosteer.index.query_side`: (captions or None, part labels, the `QuerySide`).
    """
    if args.queries_file is not None:
        fields = torch.load(args.queries_file, weights_only=True)
        if not isinstance(fields, dict) or "embeddings" not in fields:
            raise ValueError(f"--queries-file {args.queries_file!r} must hold a dict of QuerySide fields with 'embeddings'")
        return query_side(QuerySide(**fields), None)
    encoder = Index.open(folder).load_encoder(args.model, args.pretrained)
    return query_side(list(args.queries), Indexer(encoder))


def main(argv: list[str] | None = None) -> int:
    """Run the command (every rank); rank 0 prints. Returns the exit status.

    Raises:
        SystemExit: status 2, from argparse, for a bad argument.
    """
    p = parser()
    args = p.parse_args(argv)  # a bad number: argparse's error naming it, exit 2 (every rank alike, no group yet)
    if not args.queries and args.queries_file is None:
        p.error("give captions (QUERY ...) or --queries-file")
    for q in args.queries:  # bytes from a terminal in another encoding: no caption parser reads them
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:
            p.error(f"QUERY '{printable(q)}' is not UTF-8 text; type it in a UTF-8 terminal (LANG=C.UTF-8, say)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    comm = init_distributed(timeout_s=args.timeout)
    try:
        gallery = ShardedGallery.open(comm, args.index)
        if args.faiss is not None:
            gallery.build_faiss(args.faiss)
        allowed = None
        if args.where is not None:
            try:
                allowed = gallery.where(args.where)
            except (ValueError, RankTypeError) as e:  # RankValueError or no match: on every rank alike
                print(f"{PROG} (rank {comm.rank}): --where: {e}", file=sys.stderr)
                comm.close()
                return 2
            images_allowed = gallery.count_allowed(allowed)
        queries, texts, parts = None, None, None
        with comm.step("encode"):
            if comm.rank == 0:
                texts, parts, queries = load_queries(args, shard_folders(args.index, comm.world_size)[0][0])
        base = get_config(args.preset)
        cfg = base.replace(k=head_k(base.k, args.k, gallery.num_items))
        start = time.perf_counter()
        with torch.inference_mode():
            result = ShardedHead(cfg)(queries, gallery, source=0, allowed=allowed)
        seconds = time.perf_counter() - start
        k = min(args.k, cfg.k)
        # the rows shown: the re-ranked top-k and the cosine top-k (the first k in first-stage order)
        shown = torch.cat([result.indices[:, :k], result.indices.gather(1, result.first_stage_rank.argsort(1)[:, :k])], 1)
        catalog = gallery.catalog_of(shown[shown >= 0])  # a filter's padding (id -1) is shown nowhere
    except (RankFailure, ShardMismatch, CollectiveError) as e:
        print(f"{PROG} (rank {comm.rank}): {e}", file=sys.stderr)
        if not isinstance(e, CollectiveError):  # the group is still in step: leave it cleanly
            comm.close()
        return 1
    if comm.rank == 0:
        found = search_result(result, catalog, queries=texts, parts=parts, config=cfg, k=k, method=args.preset)
        info = {"index": str(args.index), "ranks": comm.world_size, "images": gallery.num_items, "seconds": seconds}
        if allowed is not None:  # as geosteer search --json
            info.update(where=list(args.where), images_allowed=images_allowed)
        if args.json:
            print(json.dumps({**info, **found.to_dict()}, indent=1))
        else:
            print(f"{gallery.num_items} images in {comm.world_size} shards, preset {args.preset}, {seconds:.3f} s")
            if allowed is not None:
                print(f"filter {' & '.join(printable(w) for w in args.where)}: {images_allowed} images")
            for q, ranking in enumerate(found.reranked):
                print(f"\n{texts[q] if texts is not None else f'query {q + 1}'}")
                for h in ranking.rows():  # --json is ASCII already (a \udcNN escape, back to bytes with os.fsencode)
                    print(f"  {h['rank']:3d}. {h['score']:.4f}  cos {h['first_stage']:.4f}  "
                          f"align {h['alignment']:.4f}  {printable(h['path'])}")
    comm.close()
    return 0


if __name__ == "__main__":
    status = main()
    # Leave without interpreter finalisation: torch's gloo threads, torn down
    # in static destructors at exit, aborted a rank ~1 run in 6 ("terminate
    # called without an active exception") after its work was done and the
    # group destroyed. Everything is written and flushed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
