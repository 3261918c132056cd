"""Parameters of a report run (``params/*.yaml``), validated before anything runs.

A bad file gives one line per bad field, named by its path, e.g.
``mei.steps: expected an integer >= 1, got -5``. Unknown fields are errors (typos do not pass
silently); a field renamed since an earlier release says its new name. Relative paths are resolved
against the folder of the params file (``~`` is expanded).

Types are strict where a lax parse would change what was written: an integer field takes an
integer only (``steps: true`` or ``steps: 2.5`` is an error, not 1 or 2), a yes/no field takes
``true`` or ``false`` only, and a number field takes an integer or a float but not ``true``.
Every number must be finite (``.nan`` and ``.inf`` are errors). Whether ``source.path`` exists
and holds what its ``kind`` needs is checked when a run starts
(:func:`meireport.sources.from_params.ensure_source`), not here: a params file can be loaded
before its cache is fetched.

Each section that configures the library is that library configuration, field for field: the
``train`` and ``trust`` sections *are* :class:`meireport.models.TrainConfig` and
:class:`meireport.trust.TrustThresholds`; ``model.core`` and ``model.readout`` are
:class:`~meireport.models.CoreConfig` and :class:`~meireport.models.ReadoutConfig`; ``mei``
builds :class:`meireport.mei.MEIConfig` (:meth:`MEIParams.config`), ``model`` the CNN and LN
configs (:meth:`ModelParams.configs`), ``selection`` the :class:`meireport.select.SelectionRule`
(:meth:`SelectionParams.rule`). pydantic checks the types; the ranges are the library's own
checks (its ``__post_init__``), run on each given field alone so that every bad field is named,
then on all of them together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from meireport.errors import MeireportError
from meireport.extract import check_area_field
from meireport.mei import DEIConfig, GaborSearchConfig, MEIConfig, default_starts
from meireport.models import CNNConfig, CoreConfig, LNConfig, ReadoutConfig, TrainConfig
from meireport.select import SelectionRule
from meireport.stimuli import MODEL_SHAPE
from meireport.trust import TrustThresholds

__all__ = [
    "Params",
    "RENAMED",
    "SourceParams",
    "ExtractParams",
    "SelectionParams",
    "NeuronsParams",
    "ModelParams",
    "MEIParams",
    "GaborParams",
    "RunParams",
    "ClusterParams",
    "LimitsParams",
    "load_params",
    "parse_params",
    "section_hash",
]


#: Fields renamed to the library's names: old dotted path -> new one (an old name in a params
#: file is an error that says the new name).
RENAMED = {
    "model.core_channels": "model.core.hidden_channels",
    "model.core_layers": "model.core.layers",
    "model.first_kernel": "model.core.input_kern",
    "model.hidden_kernel": "model.core.hidden_kern",
    "model.laplace_weight": "model.core.gamma_input",
    "model.group_sparsity_weight": "model.core.gamma_hidden",
    "model.crop": "model.crop_size",
    "model.use_gabors": "train.gabors",
    "model.ensemble": "train.ensemble",
    "train.epochs": "train.max_epochs",
    "train.val_fraction": "train.val_frac",
    "train.test_fraction": "train.test_frac",
    "mei.lr": "mei.step_size",
    "mei.precondition_exponent": "mei.fourier_exponent",
}


def _number_not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # bool is an int subclass: lax float parsing takes True as 1.0
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


def _strict_numbers(schema: CoreSchema, handler: GetCoreSchemaHandler) -> CoreSchema:
    """Make a core schema's numbers strict, in place (the library configs' fields included).

    Integers and booleans validate in strict mode (no ``True`` -> 1, ``2.0`` -> 2, ``1`` ->
    True, ``"5"`` -> 5); floats reject booleans and NaN/inf but still take integers and numeric
    text (PyYAML reads ``1e-3`` as text).
    """
    stack: list[Any] = [schema]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend(node)
            continue
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get("type")
        if kind in ("int", "bool"):
            node["strict"] = True
        elif kind == "float":
            inner = dict(node, allow_inf_nan=False)
            node.clear()
            node.update(core_schema.no_info_before_validator_function(_number_not_bool, inner))
            continue
        elif kind == "function-before" and node["function"].get("function") is _number_not_bool:
            continue  # patched already (a nested section's schema is reused)
        elif kind == "definition-ref":  # a dataclass' schema lives among the definitions
            try:
                stack.append(handler.resolve_ref_schema(node))
            except LookupError:
                pass
            continue
        stack.extend(v for k, v in node.items() if k not in ("serialization", "metadata",
                                                             "function"))
    return schema


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _section: ClassVar[str] = "params"  # the section's name in a params file

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler
                                     ) -> CoreSchema:
        return _strict_numbers(handler(source), handler)

    @classmethod
    def from_dict(cls, d: Mapping | None = None) -> Self:
        """The section from a mapping of its fields (what a notebook gets: ``p["mei"]``).

        Missing fields take their defaults. A bad mapping raises :class:`MeireportError`, one
        line per bad field named by its dotted path (``mei.steps: ...``).
        """
        if isinstance(d, cls):
            return d
        try:
            return cls.model_validate({} if d is None else d)
        except ValidationError as e:
            raise MeireportError(_lines(e, (cls._section,))) from None


# --------------------------------------------------------------------------------------------
# library configs as params: types by pydantic, ranges by the library, every bad field named
# --------------------------------------------------------------------------------------------
def _reason(error: Exception) -> str:
    """A library error's text without the ``name: `` it starts with (the caller names it)."""
    name, sep, rest = str(error).partition(": ")
    return rest if sep and " " not in name else str(error)


def _library_error(loc: tuple, text: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("library", "{reason}", {"reason": text}),
                            loc=loc, input=value)


def _relocated(err: dict, key: str, value: Any) -> InitErrorDetails:
    """An error of validating field ``key`` alone, located at that field."""
    if err["type"] == "value_error":  # a library check (MeireportError is a ValueError)
        return _library_error(tuple(err["loc"]) or (key,), _reason(err["ctx"]["error"]), value)
    ctx = dict(err.get("ctx") or {}, msg=err["msg"])
    return InitErrorDetails(type=PydanticCustomError(err["type"], "{msg}", ctx),
                            loc=tuple(err["loc"]), input=err["input"])


def _each_field(data: Any, handler: Callable, known: set[str] | None, title: str,
                check: Callable[[Any], Any] = lambda section: section) -> Any:
    """Validate ``data`` field by field (the others at their defaults), then as a whole.

    ``handler`` validates a mapping (types, then the library's ``__post_init__``); ``check``
    builds the library config from the result. A library config stops at its first bad field:
    trying each given field alone names every bad one, and the final whole build checks the
    fields against each other.
    """
    if not isinstance(data, Mapping):
        out = handler(data)
        check(out)
        return out
    errors: list[InitErrorDetails] = []
    for key, value in data.items():
        if known is not None and key not in known:
            errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=value))
            continue
        try:
            check(handler({key: value}))
        except ValidationError as e:
            errors += [_relocated(err, key, value) for err in e.errors()]
        except MeireportError as e:
            errors.append(_library_error((key,), _reason(e), value))
    if errors:
        raise ValidationError.from_exception_data(title, errors)
    out = handler(data)
    check(out)  # across fields: a MeireportError (a ValueError) names the field it is about
    return out


def _library(cls: type) -> Any:
    """A library config dataclass as a params field (a mapping of its own fields)."""
    known = {f.name for f in fields(cls)}
    return Annotated[cls, WrapValidator(
        lambda data, handler: _each_field(data, handler, known, cls.__name__))]


_Core = _library(CoreConfig)
_Readout = _library(ReadoutConfig)
_Train = _library(TrainConfig)
_Trust = _library(TrustThresholds)


class _LibrarySection(_Section):
    """A section that builds library configs (:meth:`_check` builds them; the library checks)."""

    def _check(self) -> Any:
        raise NotImplementedError

    @model_validator(mode="wrap")
    @classmethod
    def _library_checks(cls, data: Any, handler: Callable) -> Any:
        return _each_field(data, handler, None, cls.__name__, lambda section: section._check())


class SourceParams(_Section):
    """Where the session comes from."""

    kind: Literal["simulated", "allen_cache", "nwb", "url", "dandi"] = Field(
        description="simulated: the embedded simulator; allen_cache: an AllenSDK cache folder; "
        "nwb: one Allen-format .nwb file; url: one .nwb file over HTTP(S), read by byte "
        "ranges; dandi: Visual Coding sessions streamed from the DANDI archive"
    )
    path: Path | None = Field(
        None,
        description="cache folder or .nwb file; for simulated, where the simulated cache is "
        "written (default: <run dir>/cache)",
    )
    session_ids: list[int] | None = Field(
        None, description="sessions to report (default: the only one in the cache / the file; "
        "required for dandi)"
    )
    n_sessions: int | None = Field(
        None, ge=1, description="simulated only: simulate this many sessions (ids 700000001, "
        "700000002, ...) that show the same images and differ in their units; instead of "
        "session_ids")
    seed: int = Field(0, description="simulated only: seed of units and spikes (each session "
                      "id other than the default draws its own from it: session_seed)")
    n_images: int = Field(118, ge=2, description="simulated only: natural images")
    n_repeats: int = Field(50, ge=1, description="simulated only: repeats per image")
    scale: Literal["default", "full"] = Field(
        "default", description="simulated only: default (112 units, 3 stimuli) or full (a real "
        "session's shape and size: ~800 units in 11 structures, every stimulus, ~2.5 h)")
    url: str | None = Field(None, description="url only: http(s):// address of the .nwb file")
    dandiset: str = Field(
        "000021", description="dandi only: dandiset id (000021: Visual Coding Neuropixels)")
    version: str | None = Field(
        None, description="dandi only: dandiset version (default: the most recent published)")
    templates: Path | None = Field(
        None, description="folder of natural_scene_<k>.tiff (url and dandi: required, the "
        "session files do not hold the 118 images; e.g. an AllenSDK cache's "
        "natural_scene_templates/)")
    cache_dir: Path | None = Field(
        None, description="url and dandi: byte-range cache folder (default: "
        "$MEIREPORT_CACHE/http, else ~/.cache/meireport/http)")
    timeout_s: float = Field(30.0, gt=0, description="url and dandi: seconds to wait for the "
                             "server before one error line")

    @field_validator("path", "templates", "cache_dir", mode="before")
    @classmethod
    def _path_text(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("expected a path, got an empty text")
        if isinstance(v, str) and "\x00" in v:
            raise ValueError(f"expected a path, got {v!r} (holds a NUL character)")
        return v

    @field_validator("dandiset", mode="before")
    @classmethod
    def _dandiset(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"expected a 6-digit id in quotes, e.g. '000021' (YAML reads an "
                             f"unquoted 000021 as the number 17), got {v!r}")
        if not (isinstance(v, str) and re.fullmatch(r"\d{6}", v)):
            raise ValueError(f"expected a 6-digit dandiset id such as '000021', got {v!r}")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        from urllib.parse import urlsplit

        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"expected an http:// or https:// address, got {v!r}")
        return v

    @model_validator(mode="after")
    def _path_needed(self) -> SourceParams:
        if self.kind in ("allen_cache", "nwb") and self.path is None:
            raise ValueError(f"path is required for kind '{self.kind}'")
        if self.kind == "url" and self.url is None:
            raise ValueError("url is required for kind 'url'")
        if self.kind == "dandi" and not self.session_ids:
            raise ValueError("session_ids is required for kind 'dandi' (the Visual Coding "
                             "session ids to stream, e.g. [798911424])")
        if self.kind in ("url", "dandi") and self.path is not None:
            raise ValueError(f"path is not used by kind '{self.kind}' (url / dandiset say where "
                             "the file is; templates says where the images are)")
        if self.n_sessions is not None:
            if self.kind != "simulated" or self.scale != "default":
                raise ValueError("n_sessions is for kind 'simulated' at scale 'default' only "
                                 "(other sources name their sessions in session_ids)")
            from meireport.sources.simulate import DEFAULT_SESSION_ID

            ids = [DEFAULT_SESSION_ID + k for k in range(self.n_sessions)]
            if self.session_ids is not None and list(self.session_ids) != ids:
                raise ValueError("give n_sessions or session_ids, not both")
            object.__setattr__(self, "session_ids", ids)  # the ids n_sessions names
        return self


class ExtractParams(_Section):
    """Spike counting: which areas' units, the count window, the unit filter."""

    _section = "extract"
    area: str | tuple[str, ...] | None = Field(
        "VISam", description="areas of the units to analyse: a structure acronym, a list of "
        "them, 'visual' (every visual cortical area of the session) or null (every area); see "
        ":func:`meireport.extract.resolve_areas`")
    window: tuple[float, float] = Field(
        (0.0, 0.25), description="count window [t0, t1) in s from stimulus onset"
    )
    amplitude_cutoff_max: float | None = Field(0.1, description="unit filter (AllenSDK default)")
    presence_ratio_min: float | None = Field(0.95, description="unit filter (AllenSDK default)")
    isi_violations_max: float | None = Field(0.5, description="unit filter (AllenSDK default)")

    @field_validator("area", mode="before")
    @classmethod
    def _area(cls, v: Any) -> Any:
        try:
            return check_area_field(v)
        except MeireportError as e:
            raise ValueError(_reason(e)) from None

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[1] <= v[0]:
            raise ValueError(f"t1 must be > t0, got {list(v)}")
        return v


_SEED_RULE = SelectionRule()


class SelectionParams(_LibrarySection):
    """Which units are reliable enough to model (the seed's rule by default).

    The rule fields build a :class:`meireport.select.SelectionRule` (:meth:`rule`), which checks
    them; the others configure the metrics, the raster and the stability resamples.
    """

    _section = "selection"
    oracle_quantile: float | None = Field(
        _SEED_RULE.above_quantile["oracle_corr"], description="keep oracle > quantile")
    variance_quantile: float | None = Field(
        _SEED_RULE.above_quantile["variance"], description="keep var > quantile")
    min_oracle: float | None = Field(None, description="absolute oracle threshold")
    min_variance: float | None = Field(None, ge=0, description="absolute variance threshold")
    max_units: int | None = Field(
        None, description="keep at most this many (best oracle), per area with per_area")
    per_area: bool = Field(
        False, description="quantiles and max_units within each area (each unit against the "
        "units of its own area); false (the seed's): over all the analysed units. Per area, a "
        "quantile keeps each area's best units even where none is reliable: pair it with "
        "min_oracle")
    units: list[int] | None = Field(None, description="explicit unit ids; overrides the rule")
    oracle_method: Literal["jackknife", "random"] = "jackknife"
    oracle_iterations: int = Field(50, ge=1, description="random oracle only")
    seed: int = 0
    raster_bin_s: float = Field(0.1, gt=0, description="rastermap bin size (s)")
    raster_clusters: int | None = Field(
        10, ge=2, description="rastermap clusters (None sorts single neurons: much slower)"
    )
    stability_resamples: int = Field(
        20, ge=1, description="trial resamples for selection_stability (the trust criterion)"
    )

    def rule(self) -> SelectionRule:
        """The :class:`meireport.select.SelectionRule` of these fields (None: criterion off).

        Examples
        --------
        >>> SelectionParams(variance_quantile=None, min_oracle=0.1).rule()  # doctest: +ELLIPSIS
        SelectionRule(above_quantile={'oracle_corr': 0.6}, above={'oracle_corr': 0.1}, ...)
        """
        q = {"oracle_corr": self.oracle_quantile, "variance": self.variance_quantile}
        a = {"oracle_corr": self.min_oracle, "variance": self.min_variance}
        return SelectionRule(
            above_quantile={k: v for k, v in q.items() if v is not None},
            above={k: v for k, v in a.items() if v is not None},
            max_units=self.max_units,
            units=tuple(self.units) if self.units else None,
            group_by="area" if self.per_area else None,
        )

    def _check(self) -> SelectionRule:
        return self.rule()


class NeuronsParams(_Section):
    """Which neurons get per-neuron pages (training, MEI, Gabor)."""

    mode: Literal["selected", "list", "top"] = "selected"
    ids: list[int] = Field(default_factory=list, description="unit ids for mode 'list'")
    top_n: int = Field(4, ge=1, description="best N by oracle for mode 'top'")

    @model_validator(mode="after")
    def _ids_for_list(self) -> NeuronsParams:
        if self.mode == "list" and not self.ids:
            raise ValueError("ids must name at least one unit for mode 'list'")
        return self


class ModelParams(_LibrarySection):
    """Per-neuron CNN (:class:`meireport.models.CNNConfig`) and LN baseline.

    ``core`` and ``readout`` are the library's :class:`~meireport.models.CoreConfig` and
    :class:`~meireport.models.ReadoutConfig`, field for field; the input shape is the session's.
    Training options (``gabors``, ``ensemble``) are fields of the ``train`` section
    (:class:`meireport.models.TrainConfig`). The LN baseline takes the library's defaults.

    Examples
    --------
    >>> cnn, ln = ModelParams(core={"hidden_channels": 8}, crop_size=24).configs()
    >>> cnn.core.hidden_channels, cnn.crop_size, ln.crop_size
    (8, (24, 24), (24, 24))
    """

    _section = "model"
    core: _Core = CoreConfig()
    readout: _Readout = ReadoutConfig()
    crop_size: int | None = Field(
        None, description="square crop (px) of the input around the unit's RF centre "
        "(per_neuron only: a shared core sees the full field)")
    kind: Literal["per_neuron", "shared"] = Field(
        "per_neuron", description="per_neuron: one CNN per reported neuron; shared: one core "
        "fitted on every unit of every session of the run whose oracle correlation reaches "
        "shared_floor (and every reported neuron), each unit with its own readout")
    shared_floor: float = Field(
        0.2, ge=-1, le=1, description="shared only: the oracle correlation a unit needs to "
        "join the shared core's fit (a loose reliability floor, far below the selection's)")
    finetune: bool = Field(
        False, description="shared only: each reported neuron's model starts from the shared "
        "core and its readout and is fitted further on the neuron's own responses (early "
        "stopping on its validation images; the shared model is kept where no epoch beats it)")
    finetune_lr: float = Field(
        3e-3, gt=0, description="shared with finetune only: the learning rate of that fit")

    @model_validator(mode="after")
    def _finetune_shared(self) -> ModelParams:
        if self.finetune and self.kind != "shared":
            raise ValueError("finetune: fine-tunes a shared core's readouts; it needs "
                             f"model.kind: shared, got kind {self.kind!r}")
        return self

    @field_validator("readout", mode="before")
    @classmethod
    def _readout_kind(cls, v: Any) -> Any:
        if isinstance(v, str):  # the old `model.readout: pyramid | factorised`
            kind = {"pyramid": "point"}.get(v, v)
            raise ValueError(f"renamed to model.readout.kind (now a mapping: "
                             f"readout: {{kind: {kind}}})")
        return v

    def configs(self, input_shape=MODEL_SHAPE) -> tuple[CNNConfig, LNConfig]:
        """``(CNNConfig, LNConfig)`` for images of ``input_shape`` ``(rows, cols)``."""
        crop = None if self.crop_size is None else (self.crop_size, self.crop_size)
        shape = tuple(input_shape)
        return (CNNConfig(core=self.core, readout=self.readout, input_shape=shape,
                          crop_size=crop),
                LNConfig(input_shape=shape, crop_size=crop))

    def _check(self) -> tuple[CNNConfig, LNConfig]:
        return self.configs()


class MEIParams(_LibrarySection):
    """MEI synthesis (the seed's gradient ascent): :class:`meireport.mei.MEIConfig`'s fields.

    ``n_starts`` picks :func:`meireport.mei.default_starts` (white noise, black, grey, more
    noise); every other field is the :class:`~meireport.mei.MEIConfig` field of that name, with
    its default.

    Examples
    --------
    >>> MEIParams(steps=50, n_starts=2).config().starts
    ('noise', 'black')
    >>> MEIParams().config() == MEIConfig()
    True
    """

    _section = "mei"
    method: Literal["constrained", "seed"] = Field(
        MEIConfig.method, description="constrained: every step projected onto the comparison "
        "set (mean, contrast, [0, 1]); seed: the seed's contrast penalty + min-max rescale")
    contrast: float | None = Field(
        MEIConfig.target_std, gt=0, description="RMS contrast (pixel std) of the MEI and of "
        "every stimulus compared with it; null: the training images' mean std c* (the seed's)")
    steps: int = MEIConfig.steps
    step_size: float = Field(MEIConfig.step_size,
                             description="step size (RMS pixel change) of the normalised gradient")
    fourier_exponent: float = Field(MEIConfig.fourier_exponent,
                                    description="a of the 1/f^a gradient filter")
    blur_start: float = Field(MEIConfig.blur_start,
                              description="Gaussian blur sigma at step 0 (px)")
    blur_end: float = Field(MEIConfig.blur_end, description="blur sigma at the end (px)")
    contrast_weight: float = Field(MEIConfig.contrast_weight,
                                   description="lambda of |c* - std(x)| (method: seed)")
    n_starts: int = Field(len(MEIConfig.starts), description="white noise, black, grey, noise")
    seed: int = MEIConfig.seed
    stop: bool = Field(MEIConfig.stop, description="stop a start once its response has "
                       "converged (steps is then the most a start runs); false: always steps")
    stop_window: int = Field(MEIConfig.stop_window,
                             description="steps the response must stay within stop_rtol")
    stop_rtol: float = Field(MEIConfig.stop_rtol,
                             description="relative band (max - min) / |r| over the window")
    min_steps: int = Field(MEIConfig.min_steps, description="no start stops before this step "
                           "(nor before the blur decay has ended and one window has run)")

    deis: int = Field(4, ge=0, description="diverse exciting inputs per neuron (0: none)")
    dei_fraction: float = Field(0.85, gt=0, lt=1, description="each DEI drives the model to at "
                                "least this fraction of the MEI's predicted response")

    def config(self) -> MEIConfig:
        """The :class:`meireport.mei.MEIConfig` of these fields."""
        return MEIConfig(**self.model_dump(exclude={"n_starts", "contrast", "deis",
                                                    "dei_fraction"}),
                         target_std=self.contrast, starts=default_starts(self.n_starts))

    def dei_config(self) -> DEIConfig | None:
        """The :class:`meireport.mei.DEIConfig` of ``deis`` and ``dei_fraction`` (None: off)."""
        if self.deis == 0:
            return None
        return DEIConfig(n_images=self.deis, fraction=self.dei_fraction, seed=self.seed)

    def _check(self) -> MEIConfig:
        self.dei_config()
        return self.config()


class GaborParams(_Section):
    """Best session Gabor and in-silico Gabor search."""

    _section = "gabor"
    k: int = Field(3, ge=1, description="top-k session gabors averaged")
    search: bool = True
    quick: bool = Field(False, description="coarse in-silico search grid (tests, previews)")
    mask_radius: float | None = Field(None, gt=0, description="fixed mask radius (px)")

    def search_config(self) -> GaborSearchConfig:
        """The in-silico search grid: the library's default, or a coarse one with ``quick``."""
        if self.quick:
            return GaborSearchConfig(n_orientations=6, sfs_cpd=(0.04, 0.08, 0.16), n_phases=2,
                                     sizes_deg=(15.0, 30.0), position_step_deg=20.0,
                                     n_positions=2, n_refine=1, refine_iters=5)
        return GaborSearchConfig()


class LimitsParams(_Section):
    """The data-limit chapter: the pipeline on simulated sessions of growing size.

    The one definition of the study's settings (:mod:`meireport.report.limits`).

    Examples
    --------
    >>> LimitsParams.from_dict({"n_images": [60, 30, 30], "n_units": 2}).n_images
    [30, 60]
    """

    _section = "limits"

    enabled: bool = Field(True, description="run the chapter (simulated sessions only)")
    n_images: list[int] = Field([118, 300, 1000], min_length=1,
                                description="session sizes (natural images) to simulate")
    n_repeats: int = Field(50, ge=1, description="repeats per image")
    seed: int = Field(0, description="seed of the simulated sessions")
    area_population: tuple[int, int, int, int] = Field(
        (24, 16, 14, 8), description="simulated VISam units (simple, complex, untuned, poor)")
    n_units: int = Field(4, ge=1, description="simple and as many complex units modelled per "
                         "size, spread over oracle ranks")
    options_at: int | None = Field(
        118, description="size at which every data-efficiency option is compared (null: none)")
    crop: int = Field(32, ge=8, description="RF crop (px) of the crop options")
    ensemble: int = Field(3, ge=2, description="members of the ensemble option")
    mei_steps: int = Field(300, ge=1, description="MEI steps per unit")
    mei_starts: int = Field(2, ge=1, description="MEI starts per unit")
    population: bool = Field(True, description="also fit the shared-core population model")
    pooled_units: list[int] = Field(
        [10, 50, 200, 500], description="the pooled-units axis: shared cores fitted on this many "
        "units pooled over simulated sessions of pooled_at images, against the per-neuron CNN "
        "(empty: no such section)")
    pooled_at: int | None = Field(None, ge=10, description="session size (one of n_images) of "
                                  "the pooled-units axis (default: the smallest)")
    pool_sessions: int = Field(6, ge=0, description="extra simulated sessions (the simulator's "
                               "default population, every visual area) the pooled units come "
                               "from, beside the pooled_at session's own")

    @field_validator("n_images")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if min(v) < 10:
            raise ValueError(f"sizes must be >= 10, got {v}")
        return sorted(set(v))

    @field_validator("pooled_units")
    @classmethod
    def _pooled(cls, v: list[int]) -> list[int]:
        if v and min(v) < 1:
            raise ValueError(f"pooled unit counts must be >= 1, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _pooled_size(self) -> LimitsParams:
        if self.pooled_at is None:
            object.__setattr__(self, "pooled_at", min(self.n_images))
        if self.pooled_units and self.pooled_at not in self.n_images:
            raise ValueError(f"pooled_at ({self.pooled_at}) must be one of n_images "
                             f"{self.n_images}: the per-neuron CNNs it is compared with are "
                             "that size's")
        return self


class ClusterParams(_Section):
    """A batch cluster that runs the report's tasks as Dask workers (dask-jobqueue).

    Each job runs ``cores`` Dask worker processes of one thread each (a task uses one core, as
    in the local pool); ``jobs`` of them are started. Site settings dask-jobqueue reads from its
    own configuration (network interface, job-script prologue, HTCondor's disk) still apply.
    """

    _section = "run.cluster"

    kind: Literal["slurm", "pbs", "sge", "lsf", "htcondor", "moab", "oar"] = Field(
        description="the batch system (dask-jobqueue's SLURMCluster, PBSCluster, ...)")
    queue: str | None = Field(None, description="queue / partition (null: the system default)")
    account: str | None = Field(None, description="account / project to charge (null: none)")
    cores: int = Field(1, ge=1, description="cores per job")
    memory: str = Field("4GB", description="memory per job, e.g. '4GB'")
    walltime: str = Field("01:00:00", description="walltime per job (HH:MM:SS)")
    jobs: int = Field(1, ge=1, description="jobs (Dask workers) to start")
    job_extra: list[str] = Field(default_factory=list,
                                 description="extra directives for the job script")
    local_directory: Path | None = Field(None, description="workers' scratch folder")
    timeout_s: int = Field(300, gt=0, description="seconds to wait for the first worker")


class RunParams(_Section):
    """How the report's tasks are executed and where computed results are kept."""

    workers: int = Field(1, ge=1, description="local worker processes")
    timeout_s: int = Field(3600, gt=0, description="per-cell execution timeout")
    cache: Path | None = Field(
        None, description="shared cache of run-independent results (the data-limit study); "
        "null: $MEIREPORT_CACHE, else the user's cache folder (~/.cache/meireport)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where models are trained and MEIs synthesised: auto takes CUDA "
        "when there is a GPU, else the CPU")
    cluster: ClusterParams | None = Field(
        None, description="run the tasks on a batch cluster through dask-jobqueue (null: local)")


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class Params(_Section):
    """A whole report run."""

    name: str = Field("report", description="run folder name (runs/<name>): a plain folder name",
                      max_length=100)
    title: str = "meireport"
    source: SourceParams
    extract: ExtractParams = ExtractParams()
    selection: SelectionParams = SelectionParams()
    neurons: NeuronsParams = NeuronsParams()
    model: ModelParams = ModelParams()
    train: _Train = TrainConfig()
    mei: MEIParams = MEIParams()
    gabor: GaborParams = GaborParams()
    trust: _Trust = TrustThresholds()
    run: RunParams = RunParams()
    limits: LimitsParams = LimitsParams()

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, v: str) -> str:
        if not _NAME.fullmatch(v) or not v.strip("."):
            raise ValueError(
                "expected a plain folder name (letters A-Z a-z, digits, '_', '-' and '.', "
                f"not only dots, no '/'), got {v!r}")
        return v

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return json.loads(self.model_dump_json())


_BOUND_WORDS = {
    "greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<=",
}
#: What a field of a type expects, for the type errors pydantic raises.
_EXPECTED = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "float_type": "a number", "finite_number": "a finite number",
    "string_type": "text", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "dataclass_type": "a mapping",
    "path_type": "a path",
}


def _message(err: dict, prefix: tuple[str, ...] = ()) -> str:
    """One line for one pydantic error: the field's dotted path, what is wrong, the value."""
    loc = ""
    for part in (*prefix, *(p for p in err["loc"] if not str(p).startswith("function-"))):
        # a list item by its index: extract.window[1]
        loc += f"[{part}]" if isinstance(part, int) else f".{part}" if loc else str(part)
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _BOUND_WORDS:
        bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")))
        return f"{loc}: must be {_BOUND_WORDS[kind]} {bound}, got {got!r}"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        if loc in RENAMED:
            return f"{loc}: renamed to {RENAMED[loc]}"
        return f"{loc}: unknown field (check the spelling), got {got!r}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind in _EXPECTED:
        return f"{loc}: expected {_EXPECTED[kind]}, got {got!r}"
    if kind == "string_too_long":
        return f"{loc}: expected at most {ctx.get('max_length')} characters, got {got!r}"
    if kind == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "library":  # a library config's own check, located at the field
        return f"{loc}: {ctx['reason']}"
    if kind == "value_error":  # a library error across fields names its field: "name: ..."
        text = str(ctx.get("error", err["msg"]))
        name, sep, rest = text.partition(": ")
        if loc and sep and " " not in name:
            return f"{loc}.{name}: {rest}"
        return f"{loc or 'params'}: {text}"
    return f"{loc}: {err['msg'].lower()}, got {got!r}"


def _lines(e: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    return "\n".join(dict.fromkeys(_message(err, prefix) for err in e.errors()))


def parse_params(data: dict, base_dir: Path | None = None) -> Params:
    """Validate a params mapping; relative paths are resolved against ``base_dir``.

    Raises
    ------
    MeireportError
        One line per bad field, e.g. ``mei.steps: expected an integer >= 1, got -5``; a renamed
        field gives its new name (``mei.lr: renamed to mei.step_size``).

    Examples
    --------
    >>> p = parse_params({"source": {"kind": "simulated"}, "mei": {"steps": 50}})
    >>> p.mei.steps, p.selection.oracle_quantile, p.train.max_epochs
    (50, 0.6, 150)
    >>> parse_params({"source": {"kind": "simulated"}, "mei": {"steps": -5}})
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: mei.steps: expected an integer >= 1, got -5
    >>> parse_params({"source": {"kind": "simulated"}, "mei": {"lr": 0.1}})
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: mei.lr: renamed to mei.step_size
    """
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise MeireportError(f"params: expected a mapping at the top level, got {kind}")
    try:
        p = Params.model_validate(data)
    except ValidationError as e:
        raise MeireportError(_lines(e)) from None
    # absolute: a notebook's working folder is not this one
    paths = {k: _absolute(getattr(p.source, k), base_dir)
             for k in ("path", "templates", "cache_dir") if getattr(p.source, k) is not None}
    if paths:
        p = p.model_copy(update={"source": p.source.model_copy(update=paths)})
    if p.run.cache is not None:
        run = p.run.model_copy(update={"cache": _absolute(p.run.cache, base_dir)})
        p = p.model_copy(update={"run": run})
    cl = p.run.cluster
    if cl is not None and cl.local_directory is not None:
        cl = cl.model_copy(update={"local_directory": _absolute(cl.local_directory, base_dir)})
        p = p.model_copy(update={"run": p.run.model_copy(update={"cluster": cl})})
    return p


def _absolute(path: Path, base_dir: Path | None) -> Path:
    path = path.expanduser()
    if not path.is_absolute():
        path = Path(base_dir if base_dir is not None else Path.cwd()) / path
    return path.resolve()


def load_params(path) -> Params:
    """Read and validate a params YAML file (``yaml.safe_load``; nothing in it is executed).

    Raises
    ------
    MeireportError
        One line: the file does not exist, is a folder, cannot be read, is not UTF-8 text or
        not valid YAML; or one line per bad field (:func:`parse_params`).
    """
    f = Path(path).expanduser().resolve()
    if not f.exists():
        raise MeireportError(f"params: {f} does not exist")
    if not f.is_file():
        raise MeireportError(f"params: {f} is not a file; expected a params YAML file")
    try:
        raw = f.read_bytes()
    except OSError as e:
        raise MeireportError(f"params: {f} cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise MeireportError(
            f"params: {f} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
            "save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MeireportError(f"params: {f} is not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_params(data if data is not None else {}, base_dir=f.parent)


def section_hash(*parts: Any) -> str:
    """Stable sha256 of JSON-serialisable parts (used for cache keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
