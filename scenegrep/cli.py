"""The ``scenegrep`` command line: parse options, call the public API (:mod:`scenegrep`), format output.

No policy lives here: presets, overrides and option checks are :class:`scenegrep.IndexSettings`'s, the work
is :class:`scenegrep.Collection`'s. Errors of the library (:class:`scenegrep.ScenegrepError`) become one
line, ``Error: <file or thing>: <problem>``, exit code 1; anything else is a bug and says so.

Only click and the light modules of the package are imported at start-up, so ``--help`` is fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

import scenegrep
from scenegrep.choices import (
    DEFAULT_PROPOSER,
    DEFAULT_VOXEL_SIZE,
    DEVICES,
    MASK3D_COLORS,
    MASK3D_POSTPROCESS,
    MASK3D_TOPK,
    PRECISIONS,
    PRESET_NAMES,
    PROPOSERS,
    SAM_MODELS,
    SEGMENTERS,
)
from scenegrep.errors import ScenegrepError, SettingsError, one_line

log = logging.getLogger("scenegrep")

DEFAULT_HOME = "./scenegrep-home"
DEMO_CLIP = ("ViT-B-32", "openai")
DEMO_QUERIES = ("a red chair", "a wooden table", "a blue box")


class _Group(click.Group):
    """Turns library errors into one-line messages (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ScenegrepError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if e.errno == errno.EPIPE:  # `scenegrep stats | head -1`: the reader left; click exits quietly
                raise
            raise self._bug(ctx, e) from None
        except Exception as e:  # noqa: BLE001 - the CLI edge: never show a traceback by default
            raise self._bug(ctx, e) from None

    @staticmethod
    def _bug(ctx: click.Context, e: Exception) -> click.ClickException:
        if ctx.find_root().params.get("debug"):
            raise e
        return click.ClickException(f"unexpected {type(e).__name__}: {one_line(e)} (this is a bug in scenegrep; "
                                    "run again with --debug for the traceback)")


def _home(ctx: click.Context) -> Path:
    return Path(ctx.find_root().params["home"])


def _open(ctx: click.Context, write: bool = False, device: str = "cpu", catalog_url: str | None = None,
          vectors_uri: str | None = None) -> "scenegrep.Collection":
    """Writers take the home's lock; readers (search, show, scans, ...) never wait for a running index."""
    return scenegrep.open(_home(ctx), write=write, device=device, catalog_url=catalog_url, vectors_uri=vectors_uri)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):  # numpy arrays
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _given(**options: Any) -> dict[str, Any]:
    """Options the user gave (click leaves the others at None, or () for repeatable ones)."""
    return {k: v for k, v in options.items() if v is not None and v != ()}


# --------------------------------------------------------------------------------------------------


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"scenegrep {scenegrep.__version__}")
        ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="SCENEGREP_HOME",
              default=DEFAULT_HOME, show_default=True,
              help="Folder holding the catalog (SQLite), vector index (FAISS) and point files. Env: SCENEGREP_HOME.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli(home: Path, verbose: int, debug: bool) -> None:
    """scenegrep: search many 3D scans for object instances by text."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    cli(prog_name="scenegrep")


# -- shared options ---------------------------------------------------------------------------------


def _device_option(f: Callable) -> Callable:
    return click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
                        help="Device for the models (CLIP, SAM, Mask3D).")(f)


def _encoder_options(default_model: str = "the home's own, else the preset's (ViT-L-14-336)") -> Callable:
    def deco(f: Callable) -> Callable:
        f = _device_option(f)
        f = click.option("--allow-random-weights", is_flag=True,
                         help="If the CLIP weights cannot be loaded, use RANDOM weights (tests/offline demo only; "
                              "results are meaningless and the catalog records it).")(f)
        f = click.option("--clip-pretrained", default=None,
                         help="open_clip pretrained tag or a path to a weights file [default: the preset's tag "
                              "(openai) for plain model names, none for local-dir:/hf-hub: models].")(f)
        f = click.option("--clip-model", default=None,
                         help=f"open_clip model name, hf-hub:ORG/NAME or local-dir:PATH [default: {default_model}].")(f)
        return f
    return deco


def _proposer_options(f: Callable) -> Callable:
    f = click.option("--depth-check/--no-depth-check", "depth_check", default=None,
                     help="7-Scenes style scans: keep a back-projected pixel only when a neighbouring frame's depth "
                          "agrees with it (drops flying pixels) [default: on].")(f)
    f = click.option("--voxel-size", type=click.FloatRange(min=0.001, max=1.0), default=None,
                     help=f"Metres: voxel of the cloud back-projected from 7-Scenes style frames "
                          f"[default: {DEFAULT_VOXEL_SIZE}].")(f)
    f = click.option("--mask3d-colors", type=click.Choice(MASK3D_COLORS), default=None,
                     help="For mask3d: colour normalisation: ScanNet mean/std (what the released checkpoints were "
                          f"trained on) or OpenMask3D's single-scene [0, 1] colours [default: {MASK3D_COLORS[0]}].")(f)
    f = click.option("--mask3d-topk", type=click.IntRange(min=1), default=None,
                     help=f"For mask3d: masks kept by --mask3d-postprocess mask3d [default: {MASK3D_TOPK}].")(f)
    f = click.option("--mask3d-postprocess", type=click.Choice(MASK3D_POSTPROCESS), default=None,
                     help="For mask3d: default = every connected part of every query once with its best class; "
                          f"openmask3d / mask3d = those projects' own top-k [default: {MASK3D_POSTPROCESS[0]}].")(f)
    f = click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                     help="For --proposer mask3d: a Mask3D checkpoint (e.g. scannet200_val.ckpt).")(f)
    f = click.option("--masks", type=click.Path(exists=True, path_type=Path),
                     help="For --proposer file: a mask file (.npz or OpenMask3D *_masks.pt) or a folder of them.")(f)
    f = click.option("--segmenter", type=click.Choice(SEGMENTERS), default=None,
                     help="For lifted: 2D masks from SAM's automatic generator (needs --sam-checkpoint) or the "
                          "weight-free Felzenszwalb segmenter [default: sam with --sam-checkpoint, else "
                          "felzenszwalb].")(f)
    f = click.option("--proposer", type=_ProposerName(), default=DEFAULT_PROPOSER, show_default=True,
                     help=f"Class-agnostic mask proposer: {', '.join(PROPOSERS)}, or several joined by '+' "
                          "(their union, duplicates removed; union = geometric+lifted).")(f)
    return f


class _ProposerName(click.ParamType):
    """A proposer name, or several joined by '+'."""

    name = "NAME[+NAME...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        names = str(value).split("+")
        bad = [n for n in names if n not in PROPOSERS]
        if bad:
            self.fail(f"{bad[0]!r} is not one of {', '.join(PROPOSERS)} (several may be joined by '+')", param, ctx)
        return str(value)


def _sam_weights_options(f: Callable) -> Callable:
    """SAM's weights for ``--proposer lifted --segmenter sam`` (propose / eval-masks)."""
    f = click.option("--sam-model", type=click.Choice(SAM_MODELS), default=None,
                     help="SAM architecture of --sam-checkpoint [default: from the file name].")(f)
    f = click.option("--sam-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="For --proposer lifted: SAM's automatic masks from this checkpoint.")(f)
    return f


_PROPOSER_OPTIONS = ("proposer", "masks", "checkpoint", "mask3d_postprocess", "mask3d_topk", "mask3d_colors",
                     "voxel_size", "depth_check", "segmenter", "sam_checkpoint", "sam_model")


def _proposer_settings(params: dict[str, Any], device: str) -> "scenegrep.IndexSettings":
    """Settings for ``propose`` / ``eval-masks``, checked before any scan is read."""
    return scenegrep.IndexSettings.create(device=device, **_given(**{k: params[k] for k in _PROPOSER_OPTIONS}))


class _Progress:
    """The pipeline's progress callback drawn as rich progress bars on stderr (a terminal only)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "_Progress":
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def __call__(self, scan: str, stage: str, done: int, total: int) -> None:
        task = self._tasks.get(scan)
        label = scan or "all scans"  # "": the job-wide count of finished scans
        if task is None:
            task = self._tasks[scan] = self._bars.add_task(label, total=None)
        self._bars.update(task, description=f"{label} [{stage}]", completed=done, total=max(total, 1))


def _progress(quiet: bool) -> "_Progress | None":
    """Progress bars when stderr is a terminal and -q/--json were not given; otherwise none."""
    return None if quiet or not sys.stderr.isatty() else _Progress()


# -- index ------------------------------------------------------------------------------------------


class _FrameStep(click.ParamType):
    """A frame step N >= 1, or "auto"."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) and value >= 1:
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"{value!r} is neither a positive integer nor 'auto'", param, ctx)
        return n


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_proposer_options
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="default", show_default=True,
              help="Mask-feature settings: the project's defaults or OpenMask3D's exact ones (see README); "
                   "options given explicitly override the preset's values.")
@click.option("--frame-step", type=_FrameStep(), default=None,
              help="Use every N-th frame, or 'auto' (every frame up to 300, else at most 300) "
                   "[default: the preset's: auto; openmask3d 10].")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Views per mask [default: the preset's: 5].")
@click.option("--depth-threshold", type=click.FloatRange(min=0.0), default=None,
              help="Metres: a point is visible when |sensor depth - z| <= this [default: the preset's: 0.2].")
@click.option("--crop-levels", type=click.IntRange(min=1), default=None,
              help="Nested crops per view [default: the preset's: 3].")
@click.option("--crop-expansion", type=click.FloatRange(min=0.0), default=None,
              help="Per-level crop box growth [default: the preset's: 0.1].")
@click.option("--sam-model", type=click.Choice(SAM_MODELS), default=None,
              help="SAM architecture of --sam-checkpoint [default: from the file name (sam_vit_h_*.pth), "
                   "else the preset's (openmask3d: vit_h)].")
@click.option("--sam-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Refine each mask's 2D region with SAM from this checkpoint (segment_anything .pth). "
                   "Without it the box of the mask's projected visible points is used.")
@click.option("--sam-rounds", type=click.IntRange(min=1), default=None,
              help="SAM prompting rounds per (mask, view); the highest predicted IoU wins [default: 10].")
@click.option("--sam-points", type=click.IntRange(min=1), default=None,
              help="Positive prompt points per SAM round [default: 5].")
@click.option("--seed", type=int, default=None,
              help="Seed of SAM's prompt sampling (same input and seed give the same vectors) [default: 0].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision of CLIP and SAM [default: fp32].")
@_encoder_options()
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Index on Ray workers (pip install 'scenegrep[ray]'): without ADDRESS start Ray on this machine "
                   "(its CPUs and GPUs); 'auto' or ray://HOST:PORT joins a cluster. This process stays the one "
                   "writer. Put it after the paths (or write --ray=ADDRESS).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="With --ray: worker actors, each loading the models once [default: one per CPU, or per "
                   "--gpus-per-worker GPUs; at most one per scan].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0.0), default=None,
              help="With --ray: GPUs each worker reserves (0.5 = two per GPU) [default: 1 with --device cuda, "
                   "else 0].")
@click.option("--catalog-url", default=None, metavar="URL",
              help="When this creates the home: keep its catalog in this database, e.g. "
                   "postgresql+psycopg://user@host/dbname for a catalog many indexers and servers share (pip "
                   "install 'scenegrep[postgres]') [default: sqlite:///<home>/catalog.sqlite]. Recorded in "
                   "<home>/home.json; later commands read it from there.")
@click.option("--force", is_flag=True, help="Re-index scans even if unchanged.")
@click.option("--vectors-uri", default=None, metavar="URI",
              help="Where a new home keeps its vectors: embedded (FAISS, the default), milvus-lite:PATH.db or "
                   "http://HOST:19530 (Milvus); recorded by the home.")
@click.option("--json", "as_json", is_flag=True, help="Print outcomes as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def index(ctx: click.Context, paths: tuple[Path, ...], preset: str, as_json: bool, quiet: bool,
          vectors_uri: str | None, **options: Any) -> None:
    """Index scan folders (ScanNet or 7-Scenes layout) into the home.

    A folder that is not itself a scan stands for every scan folder inside it.
    """
    catalog_url = options.pop("catalog_url")
    device = options.get("device") or "cpu"
    # the home and its URIs first: a bad one is reported before any model weights are looked up
    with _open(ctx, write=True, device=device, catalog_url=catalog_url, vectors_uri=vectors_uri) as col:
        settings = scenegrep.IndexSettings.create(preset, **_given(**options))
        progress = _progress(quiet or as_json)
        # Ray prints its own messages (worker output, a worker's death) on stdout: send them to stderr, so
        # stdout carries the outcomes only
        quiet_stdout = contextlib.redirect_stdout(sys.stderr) if settings.ray_address else contextlib.nullcontext()
        with quiet_stdout:
            if progress is None:
                outcomes = col.index(paths, settings)
            else:
                with progress:
                    outcomes = col.index(paths, settings, progress=progress)
    if as_json:
        _echo_json([{
            "path": str(o.path), "name": o.name, "status": o.status, "instances": o.instances,
            "searchable": o.searchable, "error": o.error, "note": o.note, "seconds": o.seconds,
        } for o in outcomes])
    else:
        for o in outcomes:
            if o.status == "failed":
                # the error names the file at fault; prefix the scan folder only when it is another one
                said = str(o.error or "")
                click.echo(f"FAILED     {said}" if said.startswith(str(o.path)) else f"FAILED     {o.path}: {said}")
            else:
                line = f"{o.status:<10} {o.name}: {o.instances} instances, {o.searchable} searchable"
                click.echo(line + (f" ({o.note})" if o.note else ""))
    if any(o.status == "failed" for o in outcomes):
        ctx.exit(1)


# -- search -----------------------------------------------------------------------------------------


@cli.command()
@click.argument("text", required=False)
@click.option("--like", "like", type=int, default=None, metavar="ID",
              help="Query by example: the instances most like this one (its stored vector).")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Query by photo: embedded by the catalog's CLIP image tower.")
@click.option("--queries", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="One text query per line; writes one JSON line per query ({query, hits}).")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of hits.")
@click.option("--scan", "scans", multiple=True, help="Only these scans (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only scans carrying this tag of scan.json (repeatable: all).")
@click.option("--min-points", type=click.IntRange(min=0), default=None, help="Only instances with at least N points.")
@click.option("--max-points", type=click.IntRange(min=0), default=None, help="Only instances with at most N points.")
@click.option("--min-extent", type=click.FloatRange(min=0), default=None,
              help="Only instances whose bounding box's largest side is at least M metres.")
@click.option("--max-extent", type=click.FloatRange(min=0), default=None,
              help="Only instances whose bounding box's largest side is at most M metres.")
@click.option("--proposer", "proposer_name", default=None, help="Only instances of scans indexed by this proposer.")
@click.option("--all", "show_all", is_flag=True,
              help="Show near-duplicates (nested masks of one object) as hits instead of folding them.")
@click.option("--min-score", type=click.FloatRange(0.0, 1.0), default=None,
              help="Only hits whose calibrated relevance (0..1, see README) is at least this.")
@click.option("--templates", is_flag=True, help="Average a text query over a prompt-template ensemble.")
@click.option("--nprobe", type=click.IntRange(1, 65536), default=None,
              help="IVF lists visited in compressed vector segments [default: nlist/32, at least 32]; more is "
                   "slower and closer to exact.")
@_device_option
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON.")
@click.pass_context
def search(ctx: click.Context, text: str | None, like: int | None, image: Path | None, queries: Path | None,
           k: int, templates: bool, device: str, as_json: bool, show_all: bool, min_score: float | None,
           proposer_name: str | None, **filters: Any) -> None:
    """Rank object instances across all indexed scans by similarity to TEXT (or --like, --image, --queries)."""
    given = [name for name, v in (("TEXT", text), ("--like", like), ("--image", image), ("--queries", queries))
             if v is not None]
    if len(given) != 1:
        raise click.UsageError("give one of TEXT, --like ID, --image PHOTO or --queries FILE"
                               + (f" (got {', '.join(given)})" if given else ""))
    if templates and text is None and queries is None:
        raise click.UsageError("--templates applies to text queries")
    options = dict(all=show_all, min_score=min_score, proposer=proposer_name, **filters)
    with _open(ctx, device=device) as col:
        if queries is not None:
            lines = _query_lines(queries)
            for query, hits in zip(lines, col.search_many(lines, k=k, **options)):
                click.echo(json.dumps({"query": query, "hits": hits}, default=_json_default))
            return
        if like is not None:
            hits, title = col.like(like, k=k, **options), f"like instance {like}"
        elif image is not None:
            hits, title = col.search_image(image, k=k, **options), f"photo {image}"
        else:
            hits, title = col.search(text, k=k, templates=templates, **options), text
    if as_json:
        _echo_json(hits)
    else:
        _print_hits(title, hits)


#: Most lines ``search --queries`` reads (one query each).
MAX_QUERY_LINES = 10_000


def _query_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SettingsError("no such file", path)
    if path.stat().st_size > 16 * 2**20:
        raise SettingsError("larger than 16 MiB; split it", path)
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if len(lines) > MAX_QUERY_LINES:
        raise SettingsError(f"{len(lines)} queries; at most {MAX_QUERY_LINES} per file", path)
    return lines


def _print_hits(query: str, hits: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"'{query}'", title_justify="left")
    for col, kw in (("rank", {"justify": "right"}), ("id", {"justify": "right"}), ("scan", {}),
                    ("score", {"justify": "right"}), ("relevance", {"justify": "right"}),
                    ("points", {"justify": "right"}), ("folded", {"justify": "right"}), ("bbox min -> max (m)", {})):
        table.add_column(col, **kw)
    for r, h in enumerate(hits, 1):
        b = h.bbox
        rel = "-" if h.relevance is None else f"{h.relevance:.3f}"
        table.add_row(str(r), str(h.id), h.scan, f"{h.score:.4f}", rel, str(h.n_points), str(len(h.folded)),
                      f"({b[0]:.2f},{b[1]:.2f},{b[2]:.2f}) -> ({b[3]:.2f},{b[4]:.2f},{b[5]:.2f})")
    Console(width=120).print(table)
    if not hits:
        click.echo("no hits")


# -- instances ----------------------------------------------------------------------------------------


@cli.command()
@click.argument("instance_id", type=int, metavar="ID")
@click.option("--json", "as_json", is_flag=True)
@click.option("--vector", "with_vector", is_flag=True,
              help="Include the stored vector (float16 in the catalog, given as float32; null without one).")
@click.pass_context
def show(ctx: click.Context, instance_id: int, as_json: bool, with_vector: bool) -> None:
    """Details of one instance."""
    with _open(ctx) as col:
        data = col.instance(instance_id, vector=with_vector).to_dict(with_vector=with_vector)
    if as_json:
        _echo_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key:<15} {value}")


@cli.command()
@click.argument("scan")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def instances(ctx: click.Context, scan: str, as_json: bool) -> None:
    """List the instances of one indexed SCAN."""
    with _open(ctx) as col:
        rows = col.instances(scan)
    if as_json:
        _echo_json(rows)
        return
    for d in rows:
        b = d.bbox
        click.echo(f"{d.id:>8}  {d.n_points:>7} points  mask score {d.mask_score:.3f}  "
                   f"{'searchable' if d.searchable else 'no vector ':<10}  "
                   f"({b[0]:.2f},{b[1]:.2f},{b[2]:.2f}) -> ({b[3]:.2f},{b[4]:.2f},{b[5]:.2f})")
    if not rows:
        click.echo(f"{scan} has no instances")


@cli.command()
@click.argument("instance_id", type=int, metavar="ID")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def export(ctx: click.Context, instance_id: int, out: Path) -> None:
    """Write an instance's points to OUT (.ply, or .npz with indices/xyz/rgb); OUT's folder must exist."""
    with _open(ctx) as col:
        n = len(col.points(instance_id).indices)
        path = col.export(instance_id, out)
    click.echo(f"wrote {n} points of instance {instance_id} to {path}")


# -- catalog ----------------------------------------------------------------------------------------


def _scan_dict(s: Any) -> dict[str, Any]:
    return {
        "name": s.name, "status": s.status, "instances": s.instances, "searchable": s.searchable,
        "points": s.point_count, "frames": s.frame_count, "layout": s.layout, "source": s.source_path,
        "indexed_at": str(s.indexed_at) if s.indexed_at else None, "tags": s.tags,
        "proposer": s.info.get("proposer"), "mask_method_2d": s.info.get("mask_method_2d"),
        "preset": s.info.get("preset"), "info": s.info,
    }


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def scans(ctx: click.Context, as_json: bool) -> None:
    """List indexed scans."""
    with _open(ctx) as col:
        data = [_scan_dict(s) for s in col.scans()]
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
def remove(ctx: click.Context, name: str) -> None:
    """Delete a scan everywhere (catalog, vectors, points)."""
    with _open(ctx, write=True) as col:
        n = col.remove(name)
    click.echo(f"removed {name} ({n} instances)")


@cli.command()
@click.option("--recall", "recall", type=click.IntRange(min=1, max=10_000), default=None, is_flag=False,
              flag_value=200, metavar="[N]",
              help="Also measure recall@10 of the vector search against exact search on N stored vectors "
                   "(default 200).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, recall: int | None, as_json: bool) -> None:
    """Catalog and index statistics."""
    with _open(ctx) as col:
        data = col.stats()
        if recall is not None:
            data["recall_at_10"] = col.recall(recall)
    if as_json:
        _echo_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key:<16} {value}")


@cli.command()
@click.option("--repair", is_flag=True,
              help="Rebuild what can be rebuilt (vectors from the catalog, point files from the scan folders), "
                   "then check again.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Check every byte and invariant of the home; exit 1 naming each problem."""
    actions: list[str] = []
    if repair:
        with _open(ctx, write=True) as col:
            actions = col.repair()
    with _open(ctx) as col:
        problems = col.verify()
    if as_json:
        _echo_json({"ok": not problems, "problems": problems, **({"repairs": actions} if repair else {})})
    else:
        for a in actions:
            click.echo(f"REPAIR   {a}")
        for p in problems:
            click.echo(f"PROBLEM  {p}")
        if not problems:
            click.echo(f"{_home(ctx)}: ok")
    if problems:
        ctx.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def optimize(ctx: click.Context, as_json: bool) -> None:
    """Merge small vector segments and drop deleted vectors now (writers also do it by policy)."""
    with _open(ctx, write=True) as col:
        report = col.optimize()
    if as_json:
        _echo_json(report)
    else:
        for key, value in report.items():
            click.echo(f"{key:<16} {value}")


@cli.command()
@click.option("--to", "to", required=True, metavar="URI",
              help="milvus-lite:PATH.db (relative to the home), http://HOST:19530, or embedded (FAISS segments).")
@click.option("--batch", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Vectors copied per resumable step.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def migrate(ctx: click.Context, to: str, batch: int, as_json: bool) -> None:
    """Move the home's vectors to Milvus or back to embedded FAISS segments (resumable: run it again)."""
    with _open(ctx, write=True) as col:
        report = col.migrate(to, batch=batch)
    if as_json:
        _echo_json(report)
    else:
        click.echo(f"{'done' if report['done'] else 'stopped'}: {report['copied']} of {report['total']} vectors "
                   f"copied; the home's vectors are in {report['to'] if report['done'] else 'the old store'}")


# -- masks ------------------------------------------------------------------------------------------


@cli.command()
@click.argument("scan_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .npz (the project's sparse mask format).")
@_proposer_options
@_sam_weights_options
@_device_option
@click.pass_context
def propose(ctx: click.Context, scan_dir: Path, out: Path, device: str, **options: Any) -> None:
    """Write class-agnostic mask proposals for one scan without indexing."""
    masks = scenegrep.propose(scan_dir, _proposer_settings(options, device))
    masks.save_npz(out)
    click.echo(f"wrote {len(masks)} masks over {masks.num_points} points of {scan_dir} to {out}")


@cli.command("eval-masks")
@click.argument("scan_dir", type=click.Path(path_type=Path))
@_proposer_options
@_sam_weights_options
@_device_option
@click.option("--per-instance", is_flag=True, help="Also each ground-truth object's best IoU.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_masks(ctx: click.Context, scan_dir: Path, device: str, per_instance: bool, as_json: bool,
               **options: Any) -> None:
    """Class-agnostic AP of a proposer against the scan's ground truth (ScanNet protocol).

    Ground truth: gt_instances.npy, else the scan's 2D label maps (frame-*.label.png) lifted to its points.
    """
    res = scenegrep.evaluate_masks(scan_dir, _proposer_settings(options, device), per_instance=per_instance)
    if as_json:
        _echo_json(res.to_dict())
        return
    click.echo(f"{res.scan}: {res.masks} masks  AP {res.ap:.3f}  AP50 {res.ap50:.3f}  AP25 {res.ap25:.3f}  "
               f"(ground truth: {res.gt_source})")
    for inst in res.instances or []:
        note = "  (under 100 points: ignored by AP)" if inst.get("ignored") else ""
        click.echo(f"  gt {inst['gt']:>4}  {inst['points']:>7} points  best IoU {inst['best_iou']:.3f}{note}")


# -- the search server -----------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; anything else is reachable from the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind.")
@_device_option
@click.option("--token", envvar="SCENEGREP_TOKEN", default=None, metavar="T",
              help="Every /api call must carry this token (Bearer header or ?token=). Env: SCENEGREP_TOKEN.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, device: str, token: str | None) -> None:
    """Serve the search page and its JSON API over this home (read-only; follows a concurrent index)."""
    import uvicorn

    from scenegrep.server import create_app

    if not _is_loopback(host) and not token:
        _err(f"WARNING: binding {host} without a token: anyone who can reach this port can search and read the "
             "scans of this home (no authentication). Set --token or SCENEGREP_TOKEN.")
    app = create_app(_home(ctx), device=device, token=token or None)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {_home(ctx)} on http://{shown}:{port}/ (Ctrl+C stops)")
    verbose = ctx.find_root().params.get("verbose", 0)
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning", access_log=bool(verbose))


# -- synthetic data and demo ----------------------------------------------------------------------


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scans", "n", type=click.IntRange(min=1, max=1000), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", type=click.Choice(["small", "scannet"]), default="small", show_default=True)
def synth(out_dir: Path, n: int, seed: int, preset: str) -> None:
    """Write N seeded synthetic rooms (ScanNet layout, with ground truth) to OUT_DIR/<name>/."""
    for p in scenegrep.generate_scans(out_dir, n, seed=seed, preset=preset):
        click.echo(str(p))


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Where the synthetic scans and the exported PLY go.")
@_encoder_options(f"{DEMO_CLIP[0]} ({DEMO_CLIP[1]})")
@click.pass_context
def demo(ctx: click.Context, out: Path, clip_model: str | None, clip_pretrained: str | None,
         allow_random_weights: bool, device: str) -> None:
    """Make three synthetic scans, index them, run three queries and export the top hit."""
    click.echo(f"1/4 writing 3 synthetic scans to {out}/scans")
    paths = scenegrep.generate_scans(out / "scans", 3, seed=0, preset="small")
    model = clip_model or DEMO_CLIP[0]
    pretrained = clip_pretrained if clip_model else (clip_pretrained or DEMO_CLIP[1])
    settings = dict(clip_model=model, clip_pretrained=pretrained, allow_random_weights=allow_random_weights,
                    device=device)
    click.echo(f"2/4 indexing into {_home(ctx)} with CLIP {model}")
    with _open(ctx, write=True, device=device) as col:
        try:
            outcomes = col.index(paths, **_given(**settings))
        except scenegrep.EncoderWeightsError as e:
            _err(f"could not get CLIP weights ({e})")
            _err("continuing with RANDOM weights: the pipeline runs end to end, but rankings are meaningless.")
            outcomes = col.index(paths, **_given(**{**settings, "allow_random_weights": True}))
        for o in outcomes:
            click.echo(f"    {o.status:<9} {o.name}: {o.instances} instances, {o.searchable} searchable"
                       + (f" ({o.error})" if o.error else ""))
        click.echo("3/4 searching")
        top = None
        for q in DEMO_QUERIES:
            hits = col.search(q, k=5)
            _print_hits(q, hits)
            top = top or (hits[0] if hits else None)
        if top is None:
            raise SettingsError("the demo index returned no hits", _home(ctx))
        ply = col.export(top.id, out / f"top_hit_{top.id}.ply")
    click.echo(f"4/4 exported the top hit of {DEMO_QUERIES[0]!r} (instance {top.id}, scan {top.scan}) to {ply}")
    click.echo(f"serve it: scenegrep --home {_home(ctx)} serve")
    click.echo("then open http://127.0.0.1:8000/?q=a+red+chair")
    if any(o.status == "failed" for o in outcomes):
        ctx.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
