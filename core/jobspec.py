"""The job spec: one pydantic schema shared by the CLI, the REST API and the workers.

Load with :func:`load_job_spec` (YAML or JSON file, or a mapping). Relative paths resolve against
``base_dir`` (the spec file's folder by default). Every problem becomes a :class:`SpecError`
naming the field (``source.scenes.0.labels``) and what is wrong with it.

The rules of each job type (which methods it takes, which scenes, labels and bundle it needs) are
checked here and nowhere else: the API, the CLI and the worker all get them by loading the spec.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.errors import SpecError
from core.job_layout import checkpoint_file_of
from core.stac_items import StacItemError, band_files, check_common_names

JobType = Literal["adapt", "train", "predict", "evaluate", "suggest", "consensus", "pretrain"]
Method = Literal["st-dasegnet", "feature-regression", "adabn", "label-shift", "semi", "source-only", "simclr", "siameseim",
                 "croco"]
#: the methods a job of each type may name; predict and evaluate jobs run a bundle's model as it was
#: trained, so they take any method and ignore it
METHODS_OF_TYPE: dict[JobType, tuple[Method, ...]] = {
    "train": ("source-only",),
    "adapt": ("st-dasegnet", "feature-regression", "adabn", "label-shift", "semi"),
    # self-supervised pretraining of a backbone on unlabelled imagery (models/pretraining/)
    "pretrain": ("simclr", "siameseim", "croco"),
}


#: ST-DASegNet's ``adaptation.pseudo_prior`` value that reads the target's class frequencies before training, from
#: the start model (``model.checkpoint``), as a label-shift job reads them
PRIOR_FROM_START = "label-shift"


def class_mix_problem(values, num_classes: int) -> str | None:
    """Why ``values`` cannot be class frequencies of ``num_classes`` classes (one finite, non-negative number per
    class, in the order of 'classes', not all 0), or None: what a job spec and a model both check of a given
    class mix (ST-DASegNet's ``adaptation.pseudo_prior``)."""
    if len(values) != num_classes:
        return f"{len(values)} class frequencies for {num_classes} classes (one per class, in the order of 'classes')"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return f"class frequencies must be numbers (non-negative numbers, not all 0), not {values!r}"
    if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        return f"class frequencies must be finite, non-negative numbers, not all 0, not {values!r}"
    return None


#: pretraining methods that learn from co-registered pairs (source and target over the same ground)
PAIRED_PRETRAINING = ("croco",)

#: a scene's fields about labels (a pretrain job drops them)
_LABEL_KEYS = ("labels", "label_property", "label_class", "label_windows")
_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_BAND_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: the band roles an RGB image has, in its channel order (an RGB-trained stem has a filter for each; models.pretrained)
RGB_ROLES = ("red", "green", "blue")
#: the model config of a spec that names none
DEFAULT_MODEL = "segformer-tiny"
#: train ids are stored as uint8 with this value as "ignore"; class ids may be anything else
IGNORE_INDEX = 255


def _a(job_type: str) -> str:
    return f"an {job_type}" if job_type[0] in "aeiou" else f"a {job_type}"


class RuleError(ValueError):
    """A rule of the job spec broken, with the field it is about: pydantic places what a model validator
    raises at the model itself, so load_job_spec moves it to this field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class _Strict(BaseModel):
    # numbers and flags use Strict* types: "30" or true for an iteration count is a client's mistake to
    # name, not to convert (the whole model cannot be strict: paths arrive as JSON strings)
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)


#: what Linux accepts: one name (a path component) of up to 255 bytes, a whole path under 4096
NAME_MAX, PATH_MAX = 255, 4096


def check_path_length(path: str | os.PathLike) -> None:
    """ValueError naming the limit for a path that no file can have: the OS would only answer
    "File name too long" from deep inside whatever tried to open it."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise ValueError("path holds characters that cannot be in a file name") from None
    if b"\0" in raw:
        raise ValueError("path holds a NUL character")
    if len(raw) >= PATH_MAX:
        raise ValueError(f"path is {len(raw)} bytes long; the limit is {PATH_MAX - 1}")
    for part in Path(os.fsdecode(raw)).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ValueError(f"a path component is {size} bytes long ({part[:12]}...); the limit is {NAME_MAX}")


def _as_path(value: Any) -> Path:
    # "before" validators see raw JSON: a number or an object here is the client's error, not a crash
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"must be a path (a string), got {type(value).__name__}")
    check_path_length(value)
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~name" of a user this machine does not have
        raise ValueError("'~' names no home folder here; give an absolute path") from None


def _resolve(path: str | Path, info: ValidationInfo) -> Path:
    """Resolve a client path against the spec's base folder and check it exists when asked to."""
    ctx = info.context or {}
    p = _as_path(path)
    if not p.is_absolute() and ctx.get("base_dir") is not None:
        p = Path(ctx["base_dir"]) / p
    resolver = ctx.get("path_resolver")  # the service confines paths to allowed roots
    if resolver is not None:
        p = resolver(p)
    if ctx.get("check_files", True) and not p.exists():
        raise ValueError(f"file not found: {path}")
    return p


class ClassSpec(_Strict):
    """One class: its id as stored in label rasters, a name, and a display colour."""

    id: StrictInt = Field(ge=0, le=65535, description="value of this class in the label rasters")
    name: str = Field(min_length=1, max_length=64)
    color: str = Field(description="#rrggbb")

    @field_validator("color")
    @classmethod
    def _color(cls, v: str) -> str:
        if not _HEX_COLOR.match(v):
            raise ValueError(f"colour must look like #rrggbb, got {v!r}")
        return v.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class StacSource(_Strict):
    """A scene read from a STAC Item: the item, and the common names of the bands taken from it, in order."""

    item: Path = Field(description="a STAC Item: a local JSON file whose assets are local files")
    bands: list[str] = Field(
        min_length=1, description="common names of the bands to read, in order (red, green, blue, nir, swir16, "
        "swir22, pan, ...): each is the single-band asset whose eo:bands common name it is")


class SceneSpec(_Strict):
    """One scene: a multi-band image, or single-band files stacked in order, or a STAC Item's assets chosen by
    band common names, or a dataset registered with the service (which resolves it into its files); optional
    labels."""

    image: Path | None = None
    bands: list[Path] | None = Field(
        default=None, min_length=1,
        description="single-band files, stacked in order; with 'stac' given as a path, the common names of the "
        "item's bands to read (the loaded spec holds their files here)")
    stac: StacSource | None = Field(
        default=None,
        description="a STAC Item: its path, with 'bands' naming common names ({stac: item.json, bands: [red, "
        "green, nir]}), or {item, bands}; asset hrefs relative to the item resolve against its folder")
    dataset: str | None = Field(
        default=None, min_length=1, max_length=64,
        description="id of a registered dataset (service only): its image, and its labels in source and "
        "validation scenes that name none",
    )
    labels: Path | None = Field(default=None, description="label raster, or GeoJSON/GeoPackage polygons")
    label_property: str | None = Field(
        default=None, description="vector labels: the attribute holding the class id"
    )
    label_class: StrictInt | None = Field(
        default=None, description="vector labels: one class id for every polygon"
    )
    label_windows: Path | None = Field(
        default=None,
        description="GeoPackage/GeoJSON polygons (e.g. `geoadapt labels suggest`'s windows) where 'labels' hold; "
        "labels outside them are ignored (a semi job's partly labelled target scenes)")

    @model_validator(mode="before")
    @classmethod
    def _stac_bands(cls, data: Any, info: ValidationInfo) -> Any:
        """A STAC Item scene becomes ``stac: {item, bands: names}`` plus ``bands: [the assets' files]``, so that
        everything downstream (checks, validation, workers) reads files. A spec loaded again (the worker's)
        resolves the item again and refuses files that are no longer the ones it named."""
        if not isinstance(data, dict) or data.get("stac") is None:
            return data
        ref = data["stac"]
        if isinstance(ref, dict):  # the loaded form: `bands`, when given, are the files it resolved to
            item, names, given, names_at, item_at = ref.get("item"), ref.get("bands"), data.get("bands"), \
                "stac.bands", "stac.item"
        else:
            item, names, given, names_at, item_at = ref, data.get("bands"), None, "bands", "stac"
        if data.get("image") is not None:
            raise RuleError("image", "give either 'stac' (with band common names) or 'image', not both")
        try:
            names = check_common_names(names)
        except ValueError as e:
            raise RuleError(names_at, str(e)) from None
        try:
            item_path = _resolve(item, info)
        except ValueError as e:
            raise RuleError(item_at, str(e)) from None
        out = {**data, "stac": {**(ref if isinstance(ref, dict) else {}), "item": item_path, "bands": names},
               "bands": None}
        if not (info.context or {}).get("check_files", True):
            return out  # the item is read where its files are: by the server, then the worker
        try:
            files = band_files(item_path, names, confine=lambda p: _resolve(p, info))
        except StacItemError as e:
            raise RuleError(item_at if e.field == "stac" else e.field.replace("bands", names_at, 1), e.message) \
                from None
        if given is not None:
            try:
                same = isinstance(given, list) and [_resolve(g, info) for g in given] == files
            except ValueError:
                same = False
            if not same:
                raise RuleError("bands", "these are not the files the STAC item's assets name (now: "
                                         f"{', '.join(f.name for f in files)}); give the item and common names only")
        out["bands"] = files
        return out

    @field_validator("image", "labels", "label_windows", mode="before")
    @classmethod
    def _one_path(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else _resolve(v, info)

    @field_validator("bands", mode="before")
    @classmethod
    def _band_paths(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        if not isinstance(v, list):
            raise ValueError("bands must be a list of single-band files")
        return [_resolve(p, info) for p in v]

    @model_validator(mode="after")
    def _image_or_bands(self, info: ValidationInfo) -> "SceneSpec":
        if sum(v is not None for v in (self.image, self.stac or self.bands, self.dataset)) != 1:
            raise ValueError("give exactly one of 'image' (one multi-band file), 'bands' (a list of files), "
                             "'stac' (a STAC Item, with 'bands' naming common names) or 'dataset' (a registered "
                             "dataset's id)")
        if self.dataset is not None and (info.context or {}).get("check_files", True):
            # the service replaces `dataset` with the files before it checks them; here nothing would
            raise ValueError(f"dataset {self.dataset!r}: only the service resolves registered datasets "
                             "(geoadapt submit, POST /v1/jobs); to run here, give 'image' or 'bands'")
        if self.label_property and self.label_class is not None:
            raise ValueError("give at most one of 'label_property' and 'label_class'")
        if self.label_windows is not None and self.labels is None:
            raise RuleError("label_windows", "label_windows limits a scene's 'labels' to these polygons: give "
                                             "'labels' too (a label raster, or vector polygons with classes)")
        if self.label_windows is not None and self.label_windows.suffix.lower() not in (".gpkg", ".geojson", ".json"):
            raise RuleError("label_windows", "label_windows must be a GeoPackage (.gpkg) or GeoJSON (.geojson, "
                                             ".json) file of polygons")
        return self

    @property
    def paths(self) -> list[Path]:
        return [self.image] if self.image is not None else list(self.bands or [])


class RegionSpec(_Strict):
    """Part of each scene of a domain: fractions of columns/rows, or a GeoJSON AOI."""

    columns: tuple[StrictFloat, StrictFloat] | None = None
    rows: tuple[StrictFloat, StrictFloat] | None = None
    aoi: dict | Path | None = Field(default=None, description="GeoJSON geometry/feature(collection) or a file")

    @field_validator("columns", "rows")
    @classmethod
    def _fraction_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is None:
            return v
        lo, hi = v
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"must be two fractions 0 <= start < end <= 1, got {list(v)}")
        return v

    @field_validator("aoi", mode="before")
    @classmethod
    def _aoi(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None or isinstance(v, dict):
            if isinstance(v, dict) and "type" not in v:
                raise ValueError("an inline AOI must be a GeoJSON object with a 'type'")
            return v
        return _resolve(v, info)

    @model_validator(mode="after")
    def _not_both(self) -> "RegionSpec":
        if self.aoi is not None and (self.columns or self.rows):
            raise ValueError("give either fractions (columns/rows) or an aoi, not both")
        return self


class DomainSpec(_Strict):
    scenes: list[SceneSpec] = Field(min_length=1)
    region: RegionSpec | None = None
    balance: Literal["area", "scenes"] = Field(
        default="area",
        description="how training crops are shared between the scenes: 'area', in proportion to each scene's "
        "usable area; 'scenes', equally per scene, so a few small labelled tiles beside a large scene are not "
        "drowned by it")


class ModelSpec(_Strict):
    """A config name (see ``geoadapt configs``) or file, with optional field overrides."""

    config: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(
        default=None, description="pretrained weights: an mmseg-format checkpoint file, a pretrain job's output "
        "folder (or its pretrained.pth), or a model bundle (over REST also the id of a pretrain, train or adapt job)")
    band_roles: list[str] | None = Field(
        default=None, min_length=1,
        description="one role per input band (red, green, blue, pan, nir, swir16, ...): maps the bands onto a "
        "pretrained RGB stem (red/green/blue take their filter, others the mean, pan the sum); default: "
        "red, green, blue for 3 bands, pan for 1, else every band 'other'")

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _ckpt(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        p = _resolve(v, info)
        if p.is_dir() and checkpoint_file_of(p) is None:
            raise ValueError(f"folder {v} holds no weights: give a pretrain job's output folder, a model bundle or "
                             "a checkpoint file")
        return p

    @field_validator("band_roles")
    @classmethod
    def _roles(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        roles = [r.lower() for r in v]
        for r in roles:
            if not _BAND_ROLE.match(r):
                raise ValueError(f"band role {r!r} must be a short lower-case name like red, nir or swir16")
        for r in (*RGB_ROLES, "pan"):
            if roles.count(r) > 1:
                raise ValueError(f"band role {r!r} is given to {roles.count(r)} bands; at most one band has it")
        return roles


#: params a model config's ``train`` block supplies when the job leaves them unset (models.config.train_settings)
CONFIG_DEFAULTED_PARAMS = ("iterations", "batch_size", "crop")


class Params(_Strict):
    """Run parameters common to every method; method specifics go in the model overrides."""

    iterations: StrictInt = Field(default=2000, ge=1, le=10_000_000)
    batch_size: StrictInt = Field(default=4, ge=1, le=1024)
    crop: StrictInt = Field(default=128, ge=16, le=4096)
    seed: StrictInt = Field(default=0, ge=0, le=2**31 - 1)
    val_interval: StrictInt | None = Field(default=None, ge=1, description="validate every N iterations")
    checkpoint_interval: StrictInt | None = Field(default=None, ge=1)
    match_gsd: StrictBool | None = Field(
        default=None, description="resample the target onto the source GSD; default: when they differ >20%"
    )
    rare_class_sampling: StrictBool = Field(default=False, description="favour windows with rare classes")
    predict_targets: StrictBool = Field(default=True, description="adapt jobs also predict their target scenes")
    compare_source_only: StrictBool = Field(
        default=False,
        description="adapt jobs also train a source-only model (same model, data, iterations and seed; twice "
        "the training time) and record its label-free signals as metrics.label_free.source_only and, with "
        "validation scenes, its scores as metrics.source_only; feature-regression jobs always compare with "
        "their source-only teacher",
    )
    predict_probabilities: StrictBool = Field(
        default=True,
        description="predictions also write <name>_probs.tif: per-class probabilities (uint8, p x 254) for "
        "confidence maps and point queries",
    )
    shards: StrictInt | None = Field(
        default=None, ge=1, le=1024,
        description="predictions (a predict job's, or an adapt job's target maps) in this many shards of whole "
        "window rows, run by any of the service's workers and assembled into the same COG; default: one shard "
        "per GEOADAPT_SHARD_PIXELS output pixels (a raster at most that large is predicted in one piece)",
    )
    batches: int = Field(
        default=100, ge=1, le=100_000,
        description="adabn: target batches (of batch_size crops) the batch-norm statistics are averaged over; "
        "label-shift (and st-dasegnet's pseudo_prior 'label-shift'): at most batches x batch_size evaluation "
        "windows of each domain are read; st-dasegnet's norm_eval 'per-domain': batches of each domain the "
        "statistics are estimated on",
    )
    skip_shift_check: bool = Field(
        default=False,
        description="label-shift, and st-dasegnet with adaptation.pseudo_prior 'label-shift': correct even where "
        "the check finds the target's inputs changed, not only its class mix (black-box shift estimation leaves the "
        "simplex, or disagrees with EM on most of the ground); the correction is then likely to hurt",
    )
    normalization: Literal["per-domain", "source"] = Field(
        default="per-domain", description="statistics each domain is normalised with"
    )
    devices: StrictInt | None = Field(
        default=None, ge=1, le=64,
        description="train with torch.distributed on this many devices, one process each: GPUs on a CUDA worker "
        "(at most as many as it has), CPU processes otherwise; batch_size is the whole batch, shared out evenly "
        "among them. Leave it out to train in one process without torch.distributed",
    )


class SuggestParams(_Strict):
    """A suggest job: which windows of its target scene to label next (models.label_suggestions)."""

    count: StrictInt = Field(default=10, ge=1, le=10_000, description="how many windows to suggest")
    window: StrictInt | None = Field(default=None, ge=16, le=4096, multiple_of=4,
                                     description="side of each window in pixels (default: chosen from the count)")
    diversity: float = Field(default=0.5, ge=0.0, le=1.0, description="weight of the class-mix penalty")
    min_valid: float = Field(default=0.5, gt=0.0, le=1.0, description="least share of valid pixels in a window")


class ConsensusParams(_Strict):
    """A consensus job: one label map of its target scene from several annotations (models.consensus)."""

    annotations: list[Path] = Field(min_length=2, description="label rasters or vector files, one per annotator")
    label_property: str | None = Field(default=None, description="vector annotations: the class attribute")
    smoothness: float = Field(default=0.25, ge=0.0, le=100.0, description="Potts weight between similar neighbours")
    image_weight: float = Field(default=0.05, ge=0.0, le=100.0, description="weight of the image classifier's vote")

    @field_validator("annotations", mode="before")
    @classmethod
    def _annotation_paths(cls, v: Any, info: ValidationInfo) -> Any:
        return [_resolve(p, info) for p in v] if isinstance(v, list) else v


class JobSpec(_Strict):
    type: JobType
    method: Method = "source-only"
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(config=DEFAULT_MODEL))
    # null only in a pretrain job, which learns no classes (it may leave them out)
    classes: Annotated[list[ClassSpec], Field(min_length=1, max_length=254)] | None
    source: DomainSpec | None = None
    target: DomainSpec | None = None
    validation: DomainSpec | None = None
    bundle: Path | None = Field(
        default=None,
        description="an existing model bundle (predict/evaluate; feature-regression teacher; adabn source model)",
    )
    params: Params = Field(default_factory=Params)
    suggest: SuggestParams | None = None  # suggest jobs (defaults when left out)
    consensus: ConsensusParams | None = None  # consensus jobs
    output: Path

    @model_validator(mode="before")
    @classmethod
    def _pretrain_reads_imagery_only(cls, data: Any) -> Any:
        """A pretrain job learns from imagery alone: its classes may be left out, and labels given with its
        scenes (a registered dataset's, say) are dropped rather than read and checked."""
        if not isinstance(data, dict) or data.get("type") != "pretrain":
            return data
        out = {"classes": None, **data}
        for domain in ("source", "target"):
            d = out.get(domain)
            if isinstance(d, dict) and isinstance(d.get("scenes"), list):
                scenes = [{k: v for k, v in sc.items() if k not in _LABEL_KEYS} if isinstance(sc, dict) else sc
                          for sc in d["scenes"]]
                out[domain] = {**d, "scenes": scenes}
        return out

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, v: Any) -> Any:
        return {"config": v} if isinstance(v, str) else v

    @field_validator("bundle", mode="before")
    @classmethod
    def _bundle(cls, v: Any, info: ValidationInfo) -> Any:
        return None if v is None else _resolve(v, info)

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, v: Any, info: ValidationInfo) -> Any:
        ctx = info.context or {}
        p = _as_path(v)
        if not p.is_absolute() and ctx.get("base_dir") is not None:
            p = Path(ctx["base_dir"]) / p
        resolver = ctx.get("path_resolver")
        return resolver(p) if resolver is not None else p

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[ClassSpec] | None) -> list[ClassSpec] | None:
        if v is None:
            return v
        ids = [c.id for c in v]
        names = [c.name for c in v]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class ids must be unique, got {ids}")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        return v

    @model_validator(mode="after")
    def _rules_of_its_type(self) -> "JobSpec":
        """What a job of this type needs and refuses: checked here, once, so the API (422), the CLI (exit 2)
        and the worker refuse the same specs, and no job fails late on its own spec."""
        self._method_fits_type()
        if self.classes is None and self.type != "pretrain":
            raise RuleError("classes", f"{_a(self.type)} job needs 'classes' (id, name, colour of each)")
        if self.type == "pretrain":
            self._pretrain_inputs()
        elif self.type == "adapt" and self.method == "adabn":
            self._adabn_inputs()
        elif self.type == "adapt" and self.method == "label-shift":
            self._label_shift_inputs()
        elif self.type in ("train", "adapt"):
            self._training_inputs()
        elif self.type in ("suggest", "consensus"):
            self._labels_inputs()
        else:
            self._bundle_run_inputs()
        self._validation_labelled()
        self._devices_fit()
        self._given_prior_fits_classes()
        return self

    def _given_prior_fits_classes(self) -> None:
        """``adaptation.pseudo_prior`` given as the target's class frequencies: one non-negative number per
        class, not all 0 (the model checks again; here the API and the CLI refuse it before the job starts);
        read from the start model: there is one."""
        prior = (self.model.overrides or {}).get("adaptation.pseudo_prior")
        if prior == PRIOR_FROM_START and self.model.checkpoint is None:
            raise RuleError("model.overrides.adaptation.pseudo_prior", "'label-shift' reads the target's class "
                            "frequencies from the trained model the job starts from: give it model.checkpoint "
                            "(e.g. a source-only or AdaBN bundle)")
        if not isinstance(prior, list) or self.classes is None:
            return
        problem = class_mix_problem(prior, len(self.classes))
        if problem:
            raise RuleError("model.overrides.adaptation.pseudo_prior", problem)

    def _devices_fit(self) -> None:
        """``params.devices`` applies to the jobs that train through the training loop, and shares the batch out."""
        n = self.params.devices
        if n is None:
            return
        if self.type not in ("train", "adapt") or self.method in ("adabn", "label-shift", "feature-regression"):
            what = f"{self.method if self.type == 'adapt' else self.type} jobs"
            raise RuleError("params.devices", f"{what} run in one process; leave out devices (it applies to train "
                                              "jobs and st-dasegnet adapt jobs)")
        if "batch_size" in self.params.model_fields_set and self.params.batch_size % n:
            raise RuleError("params.devices", f"batch_size {self.params.batch_size} does not split evenly among "
                                              f"{n} devices (each takes batch_size / devices of every batch)")

    def _method_fits_type(self) -> None:
        allowed = METHODS_OF_TYPE.get(self.type)
        if allowed is None or self.method in allowed:
            return
        if self.type == "train":
            raise RuleError("method", f"a train job trains a plain segmentor (source-only); use type 'adapt' for "
                                      f"{self.method}")
        if self.type == "pretrain":
            raise RuleError("method", f"a pretrain job needs a pretraining method: {', '.join(allowed[:-1])} or "
                                      f"{allowed[-1]}")
        raise RuleError("method", f"{_a(self.type)} job needs an adaptation method: {', '.join(allowed[:-1])} or "
                                  f"{allowed[-1]}")

    def _training_inputs(self) -> None:
        """Train and adapt jobs (but adabn) learn from labelled source scenes; adapt jobs also see the target."""
        if self.source is None:
            raise RuleError("source", f"{_a(self.type)} job needs 'source' scenes with labels")
        # a registered dataset may bring its labels: the service checks again once it has resolved it
        self._labelled("source", f"labels is required for {_a(self.type)} job (source scenes are labelled)")
        if self.type == "adapt" and self.target is None:
            raise RuleError("target", "an adapt job needs 'target' scenes")
        if self.type == "adapt" and self.method == "semi" and not any(
                s.labels is not None or s.dataset is not None for s in self.target.scenes):
            raise RuleError("target.scenes.0.labels", "a semi adapt job needs labels on part of the target: "
                                                      "'labels' (a raster, nodata where unlabelled, or vector "
                                                      "polygons with classes), optionally with 'label_windows'")

    def _pretrain_inputs(self) -> None:
        """Pretraining learns a backbone from unlabelled imagery of either domain or both; CroCo's pairs are
        source and target scenes over the same ground. Its output is a checkpoint, not a model to start from."""
        if self.source is None and self.target is None:
            raise RuleError("source", "a pretrain job needs imagery: 'source' and/or 'target' scenes")
        if self.method in PAIRED_PRETRAINING:
            missing = "source" if self.source is None else "target" if self.target is None else None
            if missing:
                raise RuleError(missing, f"{self.method} pretrains on co-registered pairs: it needs 'source' and "
                                         "'target' scenes over the same ground")
        if self.bundle is not None:
            raise RuleError("bundle", "a pretrain job takes no 'bundle'; to start from weights, give "
                                      "model.checkpoint")
        if self.validation is not None:
            raise RuleError("validation", "a pretrain job learns no classes: it has nothing to validate")

    def _adabn_inputs(self) -> None:
        """AdaBN starts from a trained model and sees only target imagery: the bundle stands for the model
        and the source (its weights and the statistics its training crops were normalised with)."""
        if self.bundle is None:
            raise RuleError("bundle", "an adabn job needs 'bundle': the source model whose batch-norm statistics "
                                      "it re-estimates")
        if self.target is None:
            raise RuleError("target", "an adabn job needs 'target' scenes (unlabelled) to re-estimate the "
                                      "statistics on")
        if self.source is not None:
            raise RuleError("source", "an adabn job takes no 'source' scenes: the bundle's model and statistics "
                                      "stand for the source")
        # (compared with the default, not model_fields_set: a spec read back from its JSON names every field)
        if self.model != ModelSpec(config=DEFAULT_MODEL):
            raise RuleError("model", "an adabn job takes its model from 'bundle'; leave out 'model'")

    def _label_shift_inputs(self) -> None:
        """Label-shift correction starts from a trained model and needs the labelled source (to calibrate the
        model's probabilities and read the class frequencies they encode) and the unlabelled target."""
        if self.bundle is None:
            raise RuleError("bundle", "a label-shift job needs 'bundle': the model whose class frequencies it moves "
                                      "onto the target's")
        if self.source is None:
            raise RuleError("source", "a label-shift job needs 'source' scenes with labels: the model's probabilities "
                                      "are calibrated on them")
        self._labelled("source", "labels is required for a label-shift job (its probabilities are calibrated on "
                                 "the source labels)")
        if self.target is None:
            raise RuleError("target", "a label-shift job needs 'target' scenes (unlabelled) to estimate their class "
                                      "frequencies on")
        if self.model != ModelSpec(config=DEFAULT_MODEL):
            raise RuleError("model", "a label-shift job takes its model from 'bundle'; leave out 'model'")

    def _bundle_run_inputs(self) -> None:
        """Predict and evaluate jobs run a trained model on scenes; evaluate jobs score it against their labels."""
        if self.bundle is None:
            raise RuleError("bundle", f"{_a(self.type)} job needs 'bundle' (a model bundle path)")
        if self.target is None and self.source is None and self.validation is None:
            raise RuleError("target", f"{_a(self.type)} job needs scenes to run on ('target' or 'source')")
        if self.type == "evaluate":
            for domain in ("target", "source"):
                self._labelled(domain, "labels is required for an evaluate job (it scores the model against them)")

    def _labels_inputs(self) -> None:
        """Suggest jobs run a bundle over one target scene; consensus jobs combine annotations over one."""
        if self.target is None or len(self.target.scenes) != 1:
            raise RuleError("target", f"{_a(self.type)} job needs 'target' with exactly one scene (the image)")
        if self.type == "suggest" and self.bundle is None:
            raise RuleError("bundle", "a suggest job needs 'bundle' (the adapted model whose uncertainty ranks windows)")
        if self.type == "consensus" and self.consensus is None:
            raise RuleError("consensus", "a consensus job needs 'consensus' with 'annotations' (two or more files)")

    def _validation_labelled(self) -> None:
        self._labelled("validation", "labels is required (validation scenes are labelled)")

    def _labelled(self, domain: str, message: str) -> None:
        """Every scene of `domain` (when given) names its labels, or a registered dataset that may hold them."""
        spec = getattr(self, domain)
        for i, s in enumerate(spec.scenes if spec is not None else []):
            if s.labels is None and s.dataset is None:
                raise RuleError(f"{domain}.scenes.{i}.labels", message)

    # convenience -----------------------------------------------------------------------------
    @property
    def training_method(self) -> Method | None:
        """The method a train or adapt job trains its model with (a pretrain job its backbone); None for predict
        and evaluate jobs, which run a bundle's model as it is (their `method` is ignored)."""
        return self.method if self.type in ("train", "adapt", "pretrain") else None

    @property
    def predicts_targets(self) -> bool:
        """Whether the job ends by predicting its target scenes (adapt jobs, unless params.predict_targets
        is false)."""
        return self.type == "adapt" and self.params.predict_targets

    @property
    def class_ids(self) -> list[int]:
        return [c.id for c in self.classes or []]

    def to_jsonable(self) -> dict:
        """The spec as the service stores it and a worker loads it again. Params a config may supply are left
        out while the job leaves them unset, so the config's ``train`` block still applies when it runs."""
        unset = {k for k in CONFIG_DEFAULTED_PARAMS if k not in self.params.model_fields_set}
        return json.loads(self.model_dump_json(exclude={"params": unset} if unset else None))


#: levels of objects and lists a spec may nest; real ones need ~10 (a GeoJSON multipolygon AOI). Far deeper
#: ones would exhaust the serialiser's own depth limit after validation, long after the field is known
MAX_NESTING = 64


def check_nesting(data: Any, limit: int = MAX_NESTING) -> None:
    """SpecError naming the field where `data` nests deeper than `limit` levels (walked without recursion)."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    while stack:
        value, loc, depth = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            if isinstance(child, (dict, list)):
                if depth + 1 >= limit:  # named by its first levels: the full path is as long as the nesting
                    raise SpecError(f"nested deeper than {limit} levels", field=_field_name((*loc, key)[:3]))
                stack.append((child, (*loc, key), depth + 1))


def _field_name(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(spec)"


def load_job_spec(
    source: str | Path | dict,
    *,
    base_dir: str | Path | None = None,
    check_files: bool = True,
    path_resolver=None,
) -> JobSpec:
    """Parse and validate a job spec from a YAML/JSON file path, text, or mapping.

    Raises :class:`SpecError` whose ``problems`` list names each offending field.
    """
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"cannot read job spec {source}: {e.strerror}", field="(file)") from None
        base_dir = base_dir if base_dir is not None else path.parent
        try:
            data = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as e:
            raise SpecError(f"not valid YAML/JSON: {e}", field="(file)") from None
    if not isinstance(data, dict):
        raise SpecError("a job spec must be a mapping of fields", field="(spec)")
    check_nesting(data)
    ctx = {"base_dir": base_dir, "check_files": check_files, "path_resolver": path_resolver}
    try:
        return JobSpec.model_validate(data, context=ctx)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            rule = (err.get("ctx") or {}).get("error")
            loc = (*err["loc"], rule.field) if isinstance(rule, RuleError) else err["loc"]
            problems.append({"field": _field_name(loc), "message": msg})
        first = problems[0]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        raise SpecError(summary, field=first["field"], problems=problems) from None
