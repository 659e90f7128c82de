"""The ``scenegrep`` command line: a thin click layer over the library.

This is the composition root: the only module that wires every floor (storage, indexer, search).
Library errors become one-line click errors here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from scenegrep.indexer.features.encoders import EncoderWeightsError, load_encoder
from scenegrep.indexer.features.presets import PRESETS, SAM_MODELS, Preset, get_preset, sam_model_for
from scenegrep.indexer.proposals import proposer_names
from scenegrep.indexer.proposals.base import MaskFileError
from scenegrep.indexer.proposals.mask3d.proposer import MASK3D_TOPK, POSTPROCESS_MODES
from scenegrep.indexer.proposals.mask3d.voxelize import COLOR_MODES
from scenegrep.indexer.scans import ScanError
from scenegrep.indexer.weights import WeightsFileError
from scenegrep.storage.errors import StoreError

log = logging.getLogger("scenegrep")

#: Errors caused by the user's input or environment: shown as one line, exit code 1.
USER_ERRORS: tuple[type[Exception], ...] = (
    ScanError, MaskFileError, StoreError, EncoderWeightsError, WeightsFileError, ValueError, FileNotFoundError,
)

DEFAULT_HOME = "./scenegrep-home"
DEFAULT_CLIP = (PRESETS["default"].clip_model, PRESETS["default"].clip_pretrained)
DEMO_CLIP = ("ViT-B-32", "openai")
DEMO_QUERIES = ("a red chair", "a wooden table", "a blue box")


class _Group(click.Group):
    """Turns library errors into one-line messages (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except USER_ERRORS as e:
            raise click.ClickException(_one_line(e)) from None
        except Exception as e:  # noqa: BLE001 - the CLI edge: never show a traceback by default
            if ctx.find_root().params.get("debug"):
                raise
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _home(ctx: click.Context) -> Path:
    return Path(ctx.find_root().params["home"])


def _open_store(ctx: click.Context, read_only: bool = False):
    """Writers take the home's lock; readers (search, show, scans, ...) never wait for a running index."""
    from scenegrep.storage import Store

    return Store.open(_home(ctx), read_only=read_only)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _err(msg: str) -> None:
    click.echo(msg, err=True)


# --------------------------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="SCENEGREP_HOME",
              default=DEFAULT_HOME, show_default=True,
              help="Folder holding the catalog (SQLite), vector index (FAISS) and point files. Env: SCENEGREP_HOME.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
@click.version_option(package_name="scenegrep")
def cli(home: Path, verbose: int, debug: bool) -> None:
    """scenegrep: search many 3D scans for object instances by text."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    cli(prog_name="scenegrep")


# -- shared options ---------------------------------------------------------------------------------

def _device_option(f):
    return click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                        help="Device for the models (CLIP, SAM, Mask3D).")(f)


def _encoder_options(default_model: tuple[str, str] = DEFAULT_CLIP):
    def deco(f):
        f = _device_option(f)
        f = click.option("--allow-random-weights", is_flag=True,
                         help="If the CLIP weights cannot be loaded, use RANDOM weights (tests/offline demo only; "
                              "results are meaningless and the catalog records it).")(f)
        f = click.option("--clip-pretrained", default=None,
                         help=f"open_clip pretrained tag or a path to a weights file [default: {default_model[1]} for "
                              "plain model names, none for local-dir:/hf-hub: models].")(f)
        f = click.option("--clip-model", default=default_model[0], show_default=True,
                         help="open_clip model name, hf-hub:ORG/NAME or local-dir:PATH.")(f)
        return f
    return deco


def _proposer_options(f):
    f = click.option("--mask3d-colors", type=click.Choice(COLOR_MODES), default=COLOR_MODES[0],
                     show_default=True,
                     help="For mask3d: colour normalisation: ScanNet mean/std (what the released checkpoints were "
                          "trained on) or OpenMask3D's single-scene [0, 1] colours.")(f)
    f = click.option("--mask3d-topk", type=click.IntRange(min=1), default=MASK3D_TOPK, show_default=True,
                     help="For mask3d: masks kept by --mask3d-postprocess mask3d (Mask3D's topk_per_image).")(f)
    f = click.option("--mask3d-postprocess", type=click.Choice(POSTPROCESS_MODES),
                     default=POSTPROCESS_MODES[0], show_default=True,
                     help="For mask3d: default = every connected part of every query once with its best class; "
                          "openmask3d / mask3d = those projects' own top-k selection.")(f)
    f = click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                     help="For --proposer mask3d: a Mask3D checkpoint (e.g. scannet200_val.ckpt).")(f)
    f = click.option("--masks", type=click.Path(exists=True, path_type=Path),
                     help="For --proposer file: a mask file (.npz or OpenMask3D *_masks.pt) or a folder of them.")(f)
    f = click.option("--proposer", type=click.Choice(proposer_names()), default="geometric",
                     show_default=True, help="Class-agnostic mask proposer.")(f)
    return f


_MASK3D_OPTIONS = {"mask3d_postprocess": "postprocess", "mask3d_topk": "topk", "mask3d_colors": "colors"}


def _explicit(ctx: click.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (not click's default): explicit options beat a preset."""
    src = ctx.get_parameter_source(name)
    return src is not None and src not in (click.core.ParameterSource.DEFAULT,
                                           click.core.ParameterSource.DEFAULT_MAP)


def _reject_unused(ctx: click.Context, names: Sequence[str], sep: str, requirement: str) -> None:
    """One-line error when any of the options ``names`` was given explicitly although ``requirement`` is
    not met (e.g. "to --proposer mask3d")."""
    given = [n for n in names if _explicit(ctx, n)]
    if given:
        flags = sep.join("--" + n.replace("_", "-") for n in given)
        raise click.ClickException(f"{flags} only appl{'ies' if len(given) == 1 else 'y'} {requirement}")


def _check_exists(checkpoint: Path, kind: str) -> None:
    """Fail before any scan is read or model loaded when a checkpoint path is not a file."""
    if not checkpoint.is_file():
        what = "is a directory, not a checkpoint file" if checkpoint.is_dir() else f"{kind} checkpoint not found"
        raise click.ClickException(f"{checkpoint}: {what}")


def _proposer_settings(ctx: click.Context, proposer: str, checkpoint: Path | None, device: str) -> dict:
    """``proposer_options`` for the chosen proposer; one-line errors for options it does not take."""
    p = ctx.params
    if proposer != "mask3d":
        _reject_unused(ctx, ("checkpoint", *_MASK3D_OPTIONS), ", ", "to --proposer mask3d")
        return {}
    if checkpoint is None:
        raise click.ClickException("--proposer mask3d needs --checkpoint PATH (a Mask3D .ckpt file)")
    _check_exists(checkpoint, "Mask3D")
    return {"checkpoint": checkpoint, "device": device, **{v: p[k] for k, v in _MASK3D_OPTIONS.items()}}


def _pretrained(model: str, value: str | None, default: str) -> str | None:
    """The tag to load: local-dir:/hf-hub: folders carry their own weights, plain names default to ``default``."""
    if value is None:
        return None if model.startswith(("local-dir:", "hf-hub:")) else default
    return None if value.lower() in ("", "none") else value


def _load_encoder(model: str, pretrained: str | None, device: str, allow_random: bool,
                  default_tag: str = DEFAULT_CLIP[1], precision: str = "fp32"):
    enc = load_encoder(model, _pretrained(model, pretrained, default_tag), device=device,
                       allow_random_weights=allow_random, precision=precision)
    if enc.spec.random_weights:
        _err(f"WARNING: CLIP {model} is running with RANDOM weights: vectors and scores are meaningless.")
    return enc


def _progress_printer(quiet: bool):
    """A progress callback that prints one line per finished stage to stderr."""
    last: dict[str, str] = {}

    def progress(scan: str, stage: str, done: int, total: int) -> None:
        if quiet:
            return
        if stage.startswith("features:"):
            key = f"{scan}/{stage}"
            if done == total and last.get(key) != "done":
                last[key] = "done"
                _err(f"  [{scan}] {stage} {done}/{total}")
        elif done == total:
            _err(f"  [{scan}] {stage} done")

    return progress


# -- index ------------------------------------------------------------------------------------------

class _FrameStep(click.ParamType):
    """A frame step N >= 1, or "auto" (None: every frame up to the frame budget)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, int) and value >= 1):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"{value!r} is neither a positive integer nor 'auto'", param, ctx)
        return n


#: ``index`` options whose value comes from the preset unless given explicitly.
_PRESET_OPTIONS = ("frame_step", "depth_threshold", "top_k", "crop_levels", "crop_expansion",
                   "sam_rounds", "sam_points", "clip_model")
_DEFAULTS = PRESETS["default"]


def _resolve_preset(ctx: click.Context) -> Preset:
    """The chosen preset with every explicitly given option replacing its value."""
    preset = get_preset(ctx.params["preset"])
    return preset.with_overrides(**{n: ctx.params[n] for n in _PRESET_OPTIONS if _explicit(ctx, n)})


def _sam_settings(ctx: click.Context, preset: Preset) -> tuple[str | None, Path | None]:
    """(SAM model, checkpoint), or (None, None) without SAM; one-line errors for inconsistent options."""
    p = ctx.params
    checkpoint: Path | None = p["sam_checkpoint"]
    if checkpoint is None:
        if p["sam_model"] is not None:
            raise click.ClickException(f"--sam-model {p['sam_model']} needs --sam-checkpoint PATH "
                                       "(SAM never runs with random weights)")
        _reject_unused(ctx, ("sam_rounds", "sam_points"), " and ", "with --sam-checkpoint")
        return None, None
    _check_exists(checkpoint, "SAM")
    return sam_model_for(checkpoint, p["sam_model"], preset), checkpoint


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_proposer_options
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default", show_default=True,
              help="Mask-feature settings: the project's defaults or OpenMask3D's exact ones (see README); "
                   "options given explicitly override the preset's values.")
@click.option("--frame-step", type=_FrameStep(), default=None,
              help="Use every N-th frame, or 'auto' (every frame up to 300, else at most 300) "
                   "[default: the preset's: auto; openmask3d 10].")
@click.option("--top-k", type=click.IntRange(min=1), default=_DEFAULTS.top_k, show_default=True,
              help="Views per mask.")
@click.option("--depth-threshold", type=click.FloatRange(min=0.0), default=_DEFAULTS.depth_threshold,
              show_default=True, help="Metres: a point is visible when |sensor depth - z| <= this.")
@click.option("--crop-levels", type=click.IntRange(min=1), default=_DEFAULTS.crop_levels, show_default=True,
              help="Nested crops per view.")
@click.option("--crop-expansion", type=click.FloatRange(min=0.0), default=_DEFAULTS.crop_expansion,
              show_default=True, help="Per-level crop box growth.")
@click.option("--sam-model", type=click.Choice(SAM_MODELS), default=None,
              help="SAM architecture of --sam-checkpoint [default: from the file name (sam_vit_h_*.pth), "
                   "else the preset's (openmask3d: vit_h)].")
@click.option("--sam-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Refine each mask's 2D region with SAM from this checkpoint (segment_anything .pth). "
                   "Without it the box of the mask's projected visible points is used.")
@click.option("--sam-rounds", type=click.IntRange(min=1), default=_DEFAULTS.sam_rounds, show_default=True,
              help="SAM prompting rounds per (mask, view); the highest predicted IoU wins.")
@click.option("--sam-points", type=click.IntRange(min=1), default=_DEFAULTS.sam_points, show_default=True,
              help="Positive prompt points per SAM round.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of SAM's prompt sampling (same input and seed give the same vectors).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Precision of CLIP and SAM.")
@_encoder_options()
@click.option("--force", is_flag=True, help="Re-index scans even if unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print outcomes as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.pass_context
def index(ctx, paths, proposer, masks, checkpoint, mask3d_postprocess, mask3d_topk, mask3d_colors, preset,
          frame_step, top_k, depth_threshold, crop_levels, crop_expansion, sam_model, sam_checkpoint, sam_rounds,
          sam_points, seed, precision, clip_model, clip_pretrained, allow_random_weights, device, force, as_json,
          quiet):
    """Index scan folders (ScanNet or 7-Scenes layout) into the home."""
    from scenegrep.indexer.pipeline import IndexOptions, build_refiner, index_paths

    settings = _resolve_preset(ctx)
    proposer_options = _proposer_settings(ctx, proposer, checkpoint, device)
    sam_model, sam_checkpoint = _sam_settings(ctx, settings)
    # SAM first: a bad SAM checkpoint fails in a second, before CLIP (possibly ViT-L) is loaded
    refiner = build_refiner(sam_model, sam_checkpoint, device=device, precision=precision, seed=seed,
                            rounds=settings.sam_rounds, points=settings.sam_points)
    encoder = _load_encoder(settings.clip_model, clip_pretrained, device, allow_random_weights,
                            settings.clip_pretrained, precision)
    options = IndexOptions(proposer=proposer, masks=masks, proposer_options=proposer_options,
                           features=settings.feature_config(), refiner=refiner, preset=settings.name, seed=seed,
                           force=force)
    with _open_store(ctx) as store:
        outcomes = index_paths(paths, store, encoder, options, progress=_progress_printer(quiet or as_json))
    if as_json:
        _echo_json([{
            "path": str(o.path), "name": o.name, "status": o.status, "instances": o.instances,
            "searchable": o.searchable, "error": o.error, "note": o.note, "seconds": o.seconds,
        } for o in outcomes])
    else:
        for o in outcomes:
            if o.status == "failed":
                click.echo(f"FAILED     {o.path}: {o.error}")
            else:
                line = f"{o.status:<10} {o.name}: {o.instances} instances, {o.searchable} searchable"
                click.echo(line + (f" ({o.note})" if o.note else ""))
    failed = sum(o.status == "failed" for o in outcomes)
    if failed:
        ctx.exit(1)


# -- search -----------------------------------------------------------------------------------------

@cli.command()
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of hits.")
@click.option("--scan", "scans", multiple=True, help="Only these scans (repeatable).")
@click.option("--templates", is_flag=True, help="Average the query over a prompt-template ensemble.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@click.pass_context
def search(ctx, text, k, scans, templates, device, as_json):
    """Rank object instances across all indexed scans by similarity to TEXT."""
    from scenegrep.search.engine import SearchEngine

    with _open_store(ctx, read_only=True) as store:
        engine = SearchEngine(store, device=device)
        hits = engine.search(text, k=k, scans=scans or None, templates=templates)
    if as_json:
        _echo_json([h.to_dict() for h in hits])
        return
    _print_hits(text, hits)


def _print_hits(query: str, hits: Sequence) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"'{query}'", title_justify="left")
    for col, kw in (("rank", {"justify": "right"}), ("id", {"justify": "right"}), ("scan", {}),
                    ("score", {"justify": "right"}), ("points", {"justify": "right"}), ("bbox min -> max (m)", {})):
        table.add_column(col, **kw)
    for r, h in enumerate(hits, 1):
        b = h.bbox
        table.add_row(str(r), str(h.id), h.scan, f"{h.score:.4f}", str(h.n_points),
                      f"({b[0]:.2f},{b[1]:.2f},{b[2]:.2f}) -> ({b[3]:.2f},{b[4]:.2f},{b[5]:.2f})")
    Console(width=120).print(table)
    if not hits:
        click.echo("no hits")


# -- show / export ----------------------------------------------------------------------------------

@cli.command()
@click.argument("instance_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--vector", "with_vector", is_flag=True,
              help="Include the stored vector (float16 in the catalog, given as float32; null without one).")
@click.pass_context
def show(ctx, instance_id, as_json, with_vector):
    """Details of one instance."""
    from scenegrep.search.engine import SearchEngine

    with _open_store(ctx, read_only=True) as store:
        info = store.instance(instance_id)
        hit = SearchEngine(store).hit_for(info)
        scan = store.find_scan(hit.scan)
        vector = store.instance_vector(instance_id) if with_vector else None
    data = hit.to_dict()
    data.pop("score")
    scan_info = scan.info if scan else {}
    data.update(searchable=bool(info.searchable), best_frame=info.best_frame,
                mask_index=int(info.mask_index), scan_source=scan.source_path if scan else None,
                proposer=scan_info.get("proposer"), mask_method_2d=scan_info.get("mask_method_2d"))
    if with_vector:
        data["vector"] = None if vector is None else np.asarray(vector, np.float32).tolist()
    if as_json:
        _echo_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key:<15} {value}")


@cli.command()
@click.argument("instance_id", type=int)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def export(ctx, instance_id, out):
    """Write an instance's points to OUT (.ply, or .npz with indices/xyz/rgb)."""
    from scenegrep.search.engine import SearchEngine

    with _open_store(ctx, read_only=True) as store:
        pts = SearchEngine(store).points(instance_id)
    if out.suffix.lower() == ".npz":
        pts.to_npz(out)
    elif out.suffix.lower() == ".ply":
        pts.to_ply(out)
    else:
        raise click.ClickException(f"{out}: unknown export format (use .ply or .npz)")
    click.echo(f"wrote {len(pts.indices)} points of instance {instance_id} to {out}")


# -- catalog ----------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def scans(ctx, as_json):
    """List indexed scans."""
    with _open_store(ctx, read_only=True) as store:
        rows = store.scans()
    data = [{
        "name": s.name, "status": s.status, "instances": s.instances, "searchable": s.searchable,
        "points": s.point_count, "frames": s.frame_count, "layout": s.layout, "source": s.source_path,
        "indexed_at": str(s.indexed_at) if s.indexed_at else None, "tags": s.tags,
        "proposer": s.info.get("proposer"), "mask_method_2d": s.info.get("mask_method_2d"),
        "preset": s.info.get("preset"), "info": s.info,
    } for s in rows]
    if as_json:
        _echo_json(data)
        return
    if not data:
        click.echo("no scans indexed")
    for d in data:
        click.echo(f"{d['name']:<24} {d['status']:<8} {d['instances']:>5} instances "
                   f"({d['searchable']} searchable)  {d['points']} points  {d['frames']} frames  "
                   f"masks {d['proposer']}/{d['mask_method_2d']}  {d['source']}")


@cli.command()
@click.argument("name")
@click.pass_context
def remove(ctx, name):
    """Delete a scan everywhere (catalog, vectors, points)."""
    with _open_store(ctx) as store:
        n = store.remove_scan(name)
    click.echo(f"removed {name} ({n} instances)")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx, as_json):
    """Catalog and index statistics."""
    with _open_store(ctx, read_only=True) as store:
        data = store.stats()
    if as_json:
        _echo_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key:<16} {value}")


# -- masks ------------------------------------------------------------------------------------------

def _mask_options(ctx: click.Context):
    """The proposer settings of ``propose`` / ``eval-masks``, checked before any scan is read."""
    from scenegrep.indexer.pipeline import IndexOptions

    p = ctx.params
    return IndexOptions(proposer=p["proposer"], masks=p["masks"],
                        proposer_options=_proposer_settings(ctx, p["proposer"], p["checkpoint"], p["device"]))


def _propose(scan, options):
    from scenegrep.indexer.pipeline import proposer_for

    return proposer_for(scan, options).propose(scan)


@cli.command()
@click.argument("scan_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .npz (the project's sparse mask format).")
@_proposer_options
@_device_option
@click.pass_context
def propose(ctx, scan_dir, out, proposer, masks, checkpoint, mask3d_postprocess, mask3d_topk, mask3d_colors, device):
    """Write class-agnostic mask proposals for one scan without indexing."""
    from scenegrep.indexer.scans import read_scan

    options = _mask_options(ctx)
    scan = read_scan(scan_dir)
    ms = _propose(scan, options)
    ms.save_npz(out)
    click.echo(f"wrote {len(ms)} masks over {ms.num_points} points of {scan.name} to {out}")


@cli.command("eval-masks")
@click.argument("scan_dir", type=click.Path(path_type=Path))
@_proposer_options
@_device_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_masks(ctx, scan_dir, proposer, masks, checkpoint, mask3d_postprocess, mask3d_topk, mask3d_colors, device,
               as_json):
    """Class-agnostic AP of a proposer against the scan's gt_instances.npy (ScanNet protocol)."""
    from scenegrep.indexer.evaluate import evaluate_masks, load_gt
    from scenegrep.indexer.scans import read_scan

    options = _mask_options(ctx)
    scan = read_scan(scan_dir)
    gt = load_gt(scan_dir, scan.num_points)  # a bad ground truth fails before the proposals run
    ms = _propose(scan, options)
    res = evaluate_masks(ms, gt)
    data = {"scan": scan.name, "proposer": proposer, "masks": len(ms),
            "ap": float(res.ap), "ap50": float(res.ap50), "ap25": float(res.ap25)}
    if as_json:
        _echo_json(data)
    else:
        click.echo(f"{scan.name}: {len(ms)} masks  AP {res.ap:.3f}  AP50 {res.ap50:.3f}  AP25 {res.ap25:.3f}")


# -- synthetic data and demo ----------------------------------------------------------------------

@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scans", "n", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", type=click.Choice(["small", "scannet"]), default="small", show_default=True)
def synth(out_dir, n, seed, preset):
    """Write N seeded synthetic rooms (ScanNet layout, with ground truth) to OUT_DIR/<name>/."""
    from scenegrep.indexer.synthetic import generate_scans

    paths = generate_scans(out_dir, n, seed=seed, preset=preset)
    for p in paths:
        click.echo(str(p))


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Where the synthetic scans and the exported PLY go.")
@_encoder_options(DEMO_CLIP)
@click.pass_context
def demo(ctx, out, clip_model, clip_pretrained, allow_random_weights, device):
    """Make three synthetic scans, index them, run three queries and export the top hit."""
    from scenegrep.indexer.pipeline import IndexOptions, index_paths
    from scenegrep.indexer.synthetic import generate_scans
    from scenegrep.search.engine import SearchEngine

    click.echo(f"1/4 writing 3 synthetic scans to {out}/scans")
    paths = generate_scans(out / "scans", 3, seed=0, preset="small")
    try:
        encoder = _load_encoder(clip_model, clip_pretrained, device, allow_random_weights, DEMO_CLIP[1])
    except EncoderWeightsError as e:
        _err(f"could not get CLIP weights ({_one_line(e)})")
        _err("continuing with RANDOM weights: the pipeline runs end to end, but rankings are meaningless.")
        encoder = _load_encoder(clip_model, clip_pretrained, device, True, DEMO_CLIP[1])
    click.echo(f"2/4 indexing into {_home(ctx)} with CLIP {encoder.spec.model} "
               f"({'random weights' if encoder.spec.random_weights else encoder.spec.pretrained})")
    with _open_store(ctx) as store:
        outcomes = index_paths(paths, store, encoder, IndexOptions(), progress=_progress_printer(False))
        for o in outcomes:
            click.echo(f"    {o.status:<9} {o.name}: {o.instances} instances, {o.searchable} searchable"
                       + (f" ({o.error})" if o.error else ""))
        engine = SearchEngine(store, encoder=encoder)
        click.echo("3/4 searching")
        top = None
        for q in DEMO_QUERIES:
            hits = engine.search(q, k=5)
            _print_hits(q, hits)
            top = top or (hits[0] if hits else None)
        if top is None:
            raise click.ClickException("the demo index returned no hits")
        ply = engine.points(top.id).to_ply(out / f"top_hit_{top.id}.ply")
    click.echo(f"4/4 exported the top hit of {DEMO_QUERIES[0]!r} (instance {top.id}, scan {top.scan}) to {ply}")
    if any(o.status == "failed" for o in outcomes):
        ctx.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
