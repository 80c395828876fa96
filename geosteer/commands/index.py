"""`geosteer index`: your own images, indexed on disk.

`geosteer index IMAGES_DIR --out INDEX` encodes every image under IMAGES_DIR (recursively) with the model (default: the shipped demo model) and its region crops (--regions, default grid; stored as --regions-dtype float32, float16 or int8, default float32) into the index folder INDEX: safetensors shards and a JSON manifest, which records the model, so `geosteer search` and `geosteer serve` load it again. It shows a progress bar (moving per image, images/s), skips files that do not decode (listed in the manifest) and ends with a summary. Interrupted, the same command resumes from the last finished shard; run again on a finished index, it brings the index in line with IMAGES_DIR (`Index.sync`): it adds the images new there, encodes again the ones whose bytes changed (size / mtime, then a content hash, against what was recorded when they were indexed), drops the ones deleted, and prints how many of each; with nothing to encode it does not load the model.

It checks its arguments before loading anything and prints one line naming a bad one (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from geosteer.commands.args import (
    UsageError,
    check_device,
    check_positive,
    check_writable_folder,
    fail,
    first_stage_name,
    index_encoder,
    load_model,
    set_threads,
)

DEFAULT_MODEL = "demo"
DEFAULT_REGIONS = "grid"
DEFAULT_MAX_REGIONS = 16
DEFAULT_BATCH = 64
DEFAULT_SHARD = 1024


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer index`."""
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to write (or to resume, or to bring in "
                   "line with IMAGES_DIR: new images added, changed ones encoded again, deleted ones dropped)")
    p.add_argument("--model", default=None, help="anything geosteer.encoders.load_clip takes: 'demo' (default for a "
                   "new index; an existing one keeps its own), an open_clip architecture with --pretrained, "
                   "'local-dir:<folder>', 'hf-hub:<repo>'")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file for an architecture name")
    p.add_argument("--regions", default=None, help=f"region method (default: {DEFAULT_REGIONS}; "
                   "one of geosteer.encoders.regions.METHODS)")
    p.add_argument("--regions-dtype", default=None, choices=("float32", "float16", "int8"),
                   help="how region vectors are stored (default: float32; float16 halves them, int8 with a scale per "
                   "row quarters them: 32, 16 or 8 KiB an image at 16 regions, D = 512); an index keeps its own")
    p.add_argument("--faiss", default=None, metavar="FACTORY",
                   help="also build a FAISS first stage by its factory string ('IVF4096,PQ64': 64 bytes an image; "
                   "'HNSW32'; 'Flat'), trained on a sample and stored beside the shards; search and serve then take "
                   "their candidates from it (needs the faiss extra). An index that has one rebuilds it when a re-run "
                   "changes the images")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists a query visits (default: nlist / 32)")
    p.add_argument("--refine", type=int, default=None,
                   help="FAISS candidates re-scored exactly, as a multiple of K (default: 4; 1: off)")
    p.add_argument("--max-regions", type=int, default=None, help=f"regions per image at most (default: {DEFAULT_MAX_REGIONS})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images encoded together (default: {DEFAULT_BATCH}, or what the index in --out used)")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"images per shard: what an interruption loses at most (default: {DEFAULT_SHARD}, or the index's)")
    p.add_argument("--retry-skipped", action="store_true",
                   help="on an existing index, try the images it skipped (did not decode) again")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _index_plan(args: argparse.Namespace) -> tuple[str, dict | None]:
    """Check `geosteer index`'s arguments (nothing loaded yet); (state of --out, what it records or None)."""
    from geosteer.encoders.regions import METHODS as REGION_METHODS
    from geosteer.index import index_state, read_index_json, recorded_model

    images = Path(args.images).expanduser()
    if not images.exists():
        raise UsageError(f"IMAGES_DIR {args.images!r} does not exist")
    if not images.is_dir():
        raise UsageError(f"IMAGES_DIR {args.images!r} is not a folder")
    for name in ("--max-regions", "--batch-size", "--shard-size", "--threads"):
        check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.regions is not None and args.regions not in REGION_METHODS:
        raise UsageError(f"--regions {args.regions!r} is not a region method; one of {', '.join(REGION_METHODS)}")
    check_device(args.device)
    out = Path(args.out).expanduser()
    state = index_state(out)
    if state == "other":
        raise UsageError(f"--out {args.out!r} exists and is not an index (pass a new or empty folder)")
    check_writable_folder("--out", out, shown=args.out)
    recorded = None
    if state in ("complete", "partial"):
        # read and checked field by field: a StoreError naming the file and the field (status 1, the data's fault)
        recorded = read_index_json(out / ("manifest.json" if state == "complete" else "build.json"))
        model = recorded_model(recorded)[0]
        for flag, key, given, default in (("--regions", "regions", args.regions, None),
                                          ("--max-regions", "max_regions", args.max_regions, None),
                                          ("--regions-dtype", "regions_dtype", args.regions_dtype, "float32")):
            if given is not None and given != recorded.get(key, default):
                raise UsageError(f"{flag} {given!r} differs from the {recorded.get(key, default)!r} of the index in --out "
                                 f"{args.out!r}; an index holds one setting (use another --out)")
        if args.model is not None and args.model != model:
            raise UsageError(f"--model {args.model!r} differs from the index's model {model!r} in --out {args.out!r} "
                             f"(use another --out)")
    return state, recorded


def run_index(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer index`: build or resume the index, or bring it in line with IMAGES_DIR; print a summary."""
    from geosteer.index import Index, StoreError, recorded_model

    progress = not args.no_progress
    say = (lambda s: print(s, file=sys.stderr)) if progress else None
    t0 = time.perf_counter()
    try:
        state, recorded = _index_plan(args)
        set_threads(args.threads)
        if state == "complete":
            index = Index.open(args.out)
            # what changed is known from the files and the manifest alone: the model loads only to encode
            changes = index.changes(args.images, retry_skipped=args.retry_skipped)
            check_first_stage_arguments(args, index.manifest["dim"])
            encoder = index_encoder(index, args.model, args.pretrained, args.device, say) if changes.to_encode else None
            with warnings.catch_warnings():  # said below, in the command's words
                warnings.filterwarnings("ignore", message=".*indexed without a file record", category=RuntimeWarning)
                index.sync(args.images, encoder, batch_size=args.batch_size, progress=progress, changes=changes)
            what = sync_report(index.stats) + ("" if changes.to_encode else "; model not loaded")
        else:
            model, pretrained = (recorded_model(recorded, args.model, args.pretrained) if recorded is not None
                                 else (args.model or DEFAULT_MODEL, args.pretrained))
            encoder = load_model(model, pretrained, args.device, say)
            check_first_stage_arguments(args, encoder.embed_dim)
            rec = recorded or {}
            index = Index.build(args.images, args.out, encoder,
                                regions=args.regions or rec.get("regions") or DEFAULT_REGIONS,
                                max_regions=args.max_regions or rec.get("max_regions") or DEFAULT_MAX_REGIONS,
                                batch_size=args.batch_size or rec.get("batch_size") or DEFAULT_BATCH,
                                shard_size=args.shard_size or rec.get("shard_size") or DEFAULT_SHARD,
                                progress=progress,
                                regions_dtype=args.regions_dtype or rec.get("regions_dtype") or "float32")
            resumed = index.stats["resumed_shards"]
            what = f"resumed after {resumed} finished shards" if state == "partial" and resumed else "new index"
        built = first_stage(index, args.faiss, args.nprobe, args.refine)
    except UsageError as e:
        return fail("index", str(e))
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the last finished shard", file=sys.stderr)
        return 130
    except ImportError as e:  # --faiss without the faiss extra
        return fail("index", str(e))
    except ValueError as e:  # another encoder, a changed source, an old format, nothing decodable: one line
        return fail("index", str(e), status=1 if isinstance(e, StoreError) else 2)
    print(summary(args.out, index, what, time.perf_counter() - t0))
    if built is not None:
        print(f"  first stage: {first_stage_name(built)} (trained in {built.timings.get('train', 0.0):.1f} s, "
              f"added in {built.timings.get('add', 0.0):.1f} s)", file=sys.stderr)
    if state == "complete":
        for listed, verb in ((changes.changed, "encoded again (changed)"), (changes.deleted, "dropped (deleted)")):
            for path in listed[:5]:
                print(f"  {verb} {path}", file=sys.stderr)
            if len(listed) > 5:
                print(f"  ... and {len(listed) - 5} more {verb.split()[0]}", file=sys.stderr)
        if changes.adopted:
            print(f"  note: {len(changes.adopted)} images were indexed before file records (format 2): recorded as they "
                  f"are now; one replaced before this run keeps its old embedding (rebuild to be sure)", file=sys.stderr)
    for item in index.skipped[:5]:
        print(f"  skipped {item['path']}: {item['error']}", file=sys.stderr)
    if len(index.skipped) > 5:
        print(f"  ... and {len(index.skipped) - 5} more (listed in {Path(args.out) / 'manifest.json'})", file=sys.stderr)
    return 0


def check_first_stage_arguments(args: argparse.Namespace, dim: int) -> None:
    """`--faiss` / `--nprobe` / `--refine` before any image is encoded: faiss installed, the factory a FAISS index for D.

    Raises:
        UsageError: naming the argument.
    """
    for name, value in (("--nprobe", args.nprobe), ("--refine", args.refine)):
        if value is not None:
            check_positive(name, value)
            if args.faiss is None:
                raise UsageError(f"{name} goes with --faiss FACTORY")
    if args.faiss is not None:
        from geosteer.stages.first_stage_faiss import check_factory

        try:
            check_factory(args.faiss, dim)
        except (ImportError, ValueError) as e:  # no faiss; a factory string FAISS cannot build
            raise UsageError(f"--faiss: {e}") from None


def first_stage(index, factory: str | None, nprobe: int | None, refine: int | None):
    """Build the index's FAISS first stage when asked for one it lacks, or when its stored one went stale; else None.

    `--faiss FACTORY` (with `--nprobe` / `--refine`, checked before the
    encoding by `check_first_stage_arguments`) builds one unless the
    index holds a current one built the same way; without `--faiss`, a stored
    one that the run left stale (images added, changed or dropped) is built
    again with its recorded settings.
    """
    info = index.first_stage_record
    if factory is None and info is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a stale one: rebuilt here
        current = index.first_stage
    if factory is None:
        if current is not None:
            return None
        factory, nprobe, refine = info["factory"], info.get("nprobe"), info.get("refine")
    elif current is not None and current.factory == factory and (nprobe is None or nprobe == current.nprobe) \
            and (refine is None or refine == current.refine):
        return None
    return index.build_first_stage(factory, nprobe=nprobe, refine=4 if refine is None else refine)


def sync_report(stats: dict) -> str:
    """What a re-run did, in words: "nothing new", or "2 new images added, 1 changed encoded again, 3 deleted dropped"."""
    parts = [f"{stats[key]} {words}" for key, words in (
        ("new", "new images added"), ("changed", "changed encoded again"), ("deleted", "deleted dropped"),
        ("forgotten", "skipped ones gone"), ("touched", "touched (same bytes)"),
        ("adopted", "recorded (indexed before file records)")) if stats.get(key)]
    return ", ".join(parts) or "nothing new"


def summary(out: str, index, what: str, seconds: float) -> str:
    """The line `geosteer index` ends with: counts, what this run did, time, rate, model, regions, n, D, region dtype."""
    s, m = index.stats, index.manifest
    rate = f", {s['images_per_s']:.1f} images/s" if s["encoded"] + s["skipped"] else ""
    return (f"{out}: {len(index)} images indexed, {len(index.skipped)} skipped ({what}: {s['encoded']} encoded, "
            f"{s['skipped']} skipped this run) in {seconds:.1f} s{rate}; model {m['encoder']['name']}, regions "
            f"{m['regions']}, n={m['n']}, D={m['dim']}, {index.regions_dtype} regions")
