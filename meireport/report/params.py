"""Parameters of a report run (``params/*.yaml``), validated before anything runs.

A bad file gives one line per bad field, named by its path, e.g.
``mei.steps: must be > 0, got -5``. Unknown fields are errors (typos do not pass silently).
Relative paths are resolved against the folder of the params file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meireport.errors import MeireportError

__all__ = [
    "Params",
    "SourceParams",
    "ExtractParams",
    "SelectionParams",
    "NeuronsParams",
    "ModelParams",
    "TrainParams",
    "MEIParams",
    "GaborParams",
    "TrustParams",
    "RunParams",
    "LimitsParams",
    "load_params",
    "parse_params",
    "section_hash",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceParams(_Section):
    """Where the session comes from."""

    kind: Literal["simulated", "allen_cache", "nwb"] = Field(
        description="simulated: the embedded simulator; allen_cache: an AllenSDK cache folder; "
        "nwb: one Allen-format .nwb file"
    )
    path: Path | None = Field(
        None,
        description="cache folder or .nwb file; for simulated, where the simulated cache is "
        "written (default: <run dir>/cache)",
    )
    session_ids: list[int] | None = Field(
        None, description="sessions to report (default: the only one in the cache / the file)"
    )
    seed: int = Field(0, description="simulated only: seed of units and spikes")
    n_images: int = Field(118, ge=2, description="simulated only: natural images")
    n_repeats: int = Field(50, ge=1, description="simulated only: repeats per image")

    @model_validator(mode="after")
    def _path_needed(self) -> SourceParams:
        if self.kind != "simulated" and self.path is None:
            raise ValueError(f"path is required for kind '{self.kind}'")
        return self


class ExtractParams(_Section):
    """Spike counting."""

    area: str | None = Field("VISam", description="structure acronym of the units to analyse")
    window: tuple[float, float] = Field(
        (0.0, 0.25), description="count window [t0, t1) in s from stimulus onset"
    )
    amplitude_cutoff_max: float | None = Field(0.1, description="unit filter (AllenSDK default)")
    presence_ratio_min: float | None = Field(0.95, description="unit filter (AllenSDK default)")
    isi_violations_max: float | None = Field(0.5, description="unit filter (AllenSDK default)")

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[1] <= v[0]:
            raise ValueError(f"t1 must be > t0, got {list(v)}")
        return v


class SelectionParams(_Section):
    """Which units are reliable enough to model (the seed's rule by default)."""

    oracle_quantile: float | None = Field(0.6, ge=0, le=1, description="keep oracle > quantile")
    variance_quantile: float | None = Field(0.5, ge=0, le=1, description="keep var > quantile")
    min_oracle: float | None = Field(None, description="absolute oracle threshold")
    min_variance: float | None = Field(None, ge=0, description="absolute variance threshold")
    max_units: int | None = Field(None, ge=1, description="keep at most this many (best oracle)")
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


class ModelParams(_Section):
    """Per-neuron CNN and LN baseline."""

    core_channels: int = Field(16, ge=1)
    core_layers: int = Field(3, ge=1)
    first_kernel: int = Field(13, ge=1)
    hidden_kernel: int = Field(5, ge=1)
    laplace_weight: float = Field(0.1, ge=0)
    group_sparsity_weight: float = Field(0.1, ge=0)
    readout: Literal["pyramid", "factorised"] = "pyramid"
    crop: int | None = Field(None, ge=8, description="crop size (px) around the RF centre")
    use_gabors: bool = Field(False, description="add rendered gabor presentations to training")
    ensemble: int = Field(1, ge=1, description="models over seeds, predictions averaged")


class TrainParams(_Section):
    """Optimisation."""

    epochs: int = Field(150, ge=1)
    lr: float = Field(0.005, gt=0)
    batch_size: int = Field(16, ge=1)
    patience: int = Field(12, ge=1)
    loss: Literal["poisson", "mse"] = "poisson"
    val_fraction: float = Field(0.12, gt=0, lt=0.5)
    test_fraction: float = Field(0.12, gt=0, lt=0.5)
    seed: int = 0


class MEIParams(_Section):
    """MEI synthesis (the seed's gradient ascent)."""

    steps: int = Field(1000, gt=0)
    lr: float = Field(0.1, gt=0, description="step size of the normalised gradient")
    precondition_exponent: float = Field(0.25, ge=0, description="1/f^a gradient filter")
    blur_start: float = Field(7.0, ge=0, description="Gaussian blur sigma at step 0 (px)")
    blur_end: float = Field(0.001, ge=0, description="blur sigma at the last step (px)")
    contrast_weight: float = Field(2.0, ge=0, description="lambda of |c* - std(x)|")
    n_starts: int = Field(4, ge=1, description="white noise, black, grey, more noise")
    seed: int = 0


class GaborParams(_Section):
    """Best session Gabor and in-silico Gabor search."""

    k: int = Field(3, ge=1, description="top-k session gabors averaged")
    search: bool = True
    quick: bool = Field(False, description="coarse in-silico search grid (tests, previews)")
    mask_radius: float | None = Field(None, gt=0, description="fixed mask radius (px)")


class TrustParams(_Section):
    """Thresholds of the per-neuron trust assessment (:mod:`meireport.trust`)."""

    min_ci_low: float = Field(
        0.0, ge=-1, le=1, description="lower end of the test correlation's bootstrap CI must exceed"
    )
    min_frac_oracle: float = Field(0.5, ge=0, description="minimum frac_oracle")
    min_mei_agreement: float = Field(
        0.5, ge=-1, le=1, description="minimum median pixel corr between MEIs of different starts"
    )
    min_selection_stability: float = Field(
        0.8, ge=0, le=1, description="minimum fraction of trial resamples selecting the unit"
    )
    max_rf_p: float = Field(0.01, ge=0, le=1, description="maximum RF-mapping permutation p-value")


class LimitsParams(_Section):
    """The data-limit chapter: the pipeline on simulated sessions of growing size."""

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

    @field_validator("n_images")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if min(v) < 10:
            raise ValueError(f"sizes must be >= 10, got {v}")
        return v


class RunParams(_Section):
    """How notebooks are executed."""

    workers: int = Field(1, ge=1)
    timeout_s: int = Field(3600, gt=0, description="per-cell execution timeout")


class Params(_Section):
    """A whole report run."""

    name: str = Field("report", pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = "meireport"
    source: SourceParams
    extract: ExtractParams = ExtractParams()
    selection: SelectionParams = SelectionParams()
    neurons: NeuronsParams = NeuronsParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    mei: MEIParams = MEIParams()
    gabor: GaborParams = GaborParams()
    trust: TrustParams = TrustParams()
    run: RunParams = RunParams()
    limits: LimitsParams = LimitsParams()

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths as strings)."""
        return json.loads(self.model_dump_json())


_BOUND_WORDS = {
    "greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<=",
}


def _message(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _BOUND_WORDS:
        bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")))
        return f"{loc}: must be {_BOUND_WORDS[kind]} {bound}, got {got!r}"
    if kind == "extra_forbidden":
        return f"{loc}: unknown field (check the spelling), got {got!r}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "value_error":
        return f"{loc or 'params'}: {str(ctx.get('error', err['msg']))}"
    return f"{loc}: {err['msg'].lower()}, got {got!r}"


def parse_params(data: dict, base_dir: Path | None = None) -> Params:
    """Validate a params mapping; relative paths are resolved against ``base_dir``.

    Raises
    ------
    MeireportError
        One line per bad field, e.g. ``mei.steps: must be > 0, got -5``.

    Examples
    --------
    >>> p = parse_params({"source": {"kind": "simulated"}, "mei": {"steps": 50}})
    >>> p.mei.steps, p.selection.oracle_quantile
    (50, 0.6)
    >>> parse_params({"source": {"kind": "simulated"}, "mei": {"steps": -5}})
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: mei.steps: must be > 0, got -5
    """
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise MeireportError(f"params: expected a mapping at the top level, got {kind}")
    try:
        p = Params.model_validate(data)
    except ValidationError as e:
        raise MeireportError("\n".join(_message(err) for err in e.errors())) from None
    if p.source.path is not None and base_dir is not None and not p.source.path.is_absolute():
        src = p.source.model_copy(update={"path": (Path(base_dir) / p.source.path).resolve()})
        p = p.model_copy(update={"source": src})
    return p


def load_params(path) -> Params:
    """Read and validate a params YAML file (``yaml.safe_load``; nothing in it is executed)."""
    f = Path(path).expanduser().resolve()
    if not f.is_file():
        raise MeireportError(f"params: {f} does not exist")
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        raise MeireportError(f"params: {f} is not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_params(data or {}, base_dir=f.parent)


def section_hash(*parts: Any) -> str:
    """Stable sha256 of JSON-serialisable parts (used for cache keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
