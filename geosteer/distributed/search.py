"""Command-line sharded search: one rank per shard, launched by torchrun.

    python -m torch.distributed.run --nproc-per-node 2 -m geosteer.distributed.search INDEX "a red circle" -k 5

INDEX is a sharded index (a folder holding `shards.json`, one shard per
rank: `geosteer.distributed.write_sharded_index`, or `write_shard_list`
over folders `geosteer index` built), or one index folder, whose rows the
ranks split. Rank 0 encodes the captions with the index's recorded model
(or reads `--queries-file`, a `torch.save`d dict of `QuerySide` fields),
broadcasts them, and prints what `ShardedHead` returns: the same ranking
`geosteer search` prints for the whole gallery. Without torchrun it runs
as one rank. Exit status: 0, 1 for a failed search (every rank reports it),
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from geosteer.config import PRESETS, get_config
from geosteer.distributed.comm import DEFAULT_TIMEOUT_S, init_distributed
from geosteer.distributed.faults import CollectiveError, RankFailure, ShardMismatch
from geosteer.distributed.head import ShardedHead
from geosteer.distributed.shard import ShardedGallery, shard_folders
from geosteer.inputs import QuerySide

PROG = "python -m torch.distributed.run --nproc-per-node N -m geosteer.distributed.search"


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("index", metavar="INDEX", help="sharded index folder (shards.json) or one index folder")
    p.add_argument("queries", metavar="QUERY", nargs="*", help="captions to search for")
    p.add_argument("-k", type=int, default=10, help="results per query (default: %(default)s)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="head preset (default: %(default)s)")
    p.add_argument("--queries-file", default=None, metavar="Q.pt",
                   help="torch.save'd dict of QuerySide fields (embeddings, parts, ...) instead of captions")
    p.add_argument("--model", default=None, help="text encoder (default: the one the index records)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint of --model")
    p.add_argument("--faiss", default=None, choices=("ivf", "hnsw", "flat"), help="first stage: a FAISS index per shard")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="collective timeout, s (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def load_queries(args: argparse.Namespace, manifest: dict) -> tuple[QuerySide, list[str]]:
    """The query side (rank 0): from `--queries-file`, or the captions encoded with the index's model."""
    if args.queries_file is not None:
        fields = torch.load(args.queries_file, weights_only=True)
        if not isinstance(fields, dict) or "embeddings" not in fields:
            raise ValueError(f"--queries-file {args.queries_file!r} must hold a dict of QuerySide fields with 'embeddings'")
        q = QuerySide(**fields)
        return q, [f"query {i + 1}" for i in range(q.embeddings.shape[0])]
    from geosteer.encoders import load_clip
    from geosteer.encoders.parts import split_parts
    from geosteer.index import Indexer, encoder_fingerprint, query_inputs

    meta = manifest.get("metadata") or {}
    model = args.model or meta.get("model") or manifest["encoder"]["name"]
    encoder = load_clip(model, args.pretrained or (meta.get("pretrained") if args.model is None else None))
    if encoder_fingerprint(encoder) != manifest["encoder"]["fingerprint"]:
        raise ValueError(f"model {model!r} is not the encoder the index was built with ({manifest['encoder']['name']!r}, "
                         f"fingerprint {manifest['encoder']['fingerprint']})")
    parts, relations = [], []
    for caption in args.queries:
        try:
            p, r = split_parts(caption)
        except ValueError:  # a caption naming no object is matched as a whole, as Index.search does
            p, r = [caption.strip()], []
        parts.append(p)
        relations.append(r)
    indexer = Indexer(encoder)
    q = query_inputs(indexer.encode_texts, list(args.queries), parts, relations, [[] for _ in args.queries], "parts")
    return q, list(args.queries)


def main(argv: list[str] | None = None) -> int:
    """Run the command (every rank); rank 0 prints."""
    args = parser().parse_args(argv)
    if args.k < 1 or (args.threads is not None and args.threads < 1):
        print(f"{PROG}: -k and --threads must be >= 1", file=sys.stderr)
        return 2
    if not args.queries and args.queries_file is None:
        print(f"{PROG}: give captions (QUERY ...) or --queries-file", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    comm = init_distributed(timeout_s=args.timeout)
    try:
        gallery = ShardedGallery.open(comm, args.index)
        if args.faiss is not None:
            gallery.build_faiss(args.faiss)
        queries, labels = None, None
        with comm.step("encode"):
            if comm.rank == 0:
                folder = shard_folders(args.index, comm.world_size)[0][0]
                manifest = json.loads((Path(folder) / "manifest.json").read_text())
                queries, labels = load_queries(args, manifest)
        base = get_config(args.preset)
        cfg = base.replace(k=min(max(base.k, args.k), gallery.num_items))
        start = time.perf_counter()
        with torch.inference_mode():
            result = ShardedHead(cfg)(queries, gallery, source=0)
        seconds = time.perf_counter() - start
        k = min(args.k, cfg.k)
        paths = gallery.paths_of(result.indices[:, :k])
    except (RankFailure, ShardMismatch, CollectiveError) as e:
        print(f"{PROG} (rank {comm.rank}): {e}", file=sys.stderr)
        if not isinstance(e, CollectiveError):  # the group is still in step: leave it cleanly
            comm.close()
        return 1
    if comm.rank == 0:
        rows = [[{"rank": r + 1, "id": int(result.indices[q, r]), "path": paths[q][r], "score": float(result.scores[q, r]),
                  "cosine": float(result.first_stage_scores[q, r]), "alignment": float(result.alignment[q, r]),
                  "structure": float(result.structure[q, r])} for r in range(k)] for q in range(len(labels))]
        if args.json:
            print(json.dumps({"index": str(args.index), "ranks": comm.world_size, "images": gallery.num_items,
                              "seconds": seconds, "config": dataclasses.asdict(cfg),
                              "queries": [{"query": label, "results": r} for label, r in zip(labels, rows)]}, indent=1))
        else:
            print(f"{gallery.num_items} images in {comm.world_size} shards, preset {args.preset}, {seconds:.3f} s")
            for label, hits in zip(labels, rows):
                print(f"\n{label}")
                for h in hits:
                    print(f"  {h['rank']:3d}. {h['score']:.4f}  cos {h['cosine']:.4f}  align {h['alignment']:.4f}  {h['path']}")
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
