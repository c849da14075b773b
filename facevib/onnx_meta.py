"""The metadata contract of a facevib ONNX file (its ``metadata_props``), with no torch or onnx.

``python -m facevib.export`` writes these string key/value pairs into the model file; the
server reads them back through ONNX Runtime
(``session.get_modelmeta().custom_metadata_map``), so this module imports only the standard
library: the serving image has neither torch nor onnx.

Keys (all prefixed ``facevib.``; structured values are JSON strings):

========================  =====================================================================
``facevib.schema``        version of this contract (``"1"``)
``facevib.version``       facevib version that wrote the file
``facevib.model_name``    registry name, e.g. ``"cellvib_r100"``
``facevib.arch``          JSON object: architecture (block, layers, widths, VIB settings, ...)
``facevib.embedding_dim`` embedding size D (decimal integer)
``facevib.input_size``    crop side S (decimal integer): the input is (N, 3, S, S)
``facevib.preprocess``    JSON object: ``color`` "RGB", ``layout`` "NCHW", ``mean`` and ``std``
                          per channel on the 0-255 scale (input = (pixel - mean) / std),
                          ``alignment`` "arcface_5pt", ``template`` the 5 x 2 landmark template
                          in pixels of the S x S crop
``facevib.config_digest`` sha256 (hex) of the resolved training config JSON; absent when the
                          checkpoint had no config
``facevib.outputs``       JSON list of output names in graph order: ``["embedding"]`` or
                          ``["embedding", "uncertainty"]``
``facevib.uncertainty``   JSON object saying what the ``uncertainty`` output is (absent without it)
``facevib.quality``       JSON object saying what the ``quality`` output is: the score, its [0, 1]
                          scale and the calibration quantiles of that scale (absent without it)
``facevib.calibration``   JSON object (:class:`Calibration`), absent when not calibrated
``facevib.identification`` JSON object (:class:`IdentificationCalibration`): the 1:N open-set
                          threshold at a target FPIR, absent when not calibrated
``facevib.precision``     JSON object (:class:`Precision`): the graph's arithmetic (``float32`` or
                          ``float16``), its input/output type (``float32`` either way) and, for
                          float16, the parity measured against the float32 graph at export;
                          absent in files written before it existed (read as float32)
========================  =====================================================================

A file with no ``facevib.`` key at all (a plain insightface ONNX, say) makes
:meth:`ModelMetadata.from_props` raise :class:`MissingMetadataError`;
:func:`read_metadata` catches exactly that case and builds the insightface defaults
(:meth:`ModelMetadata.default`): RGB NCHW, ``(x - 127.5) / 127.5``, the ArcFace 5-point
template, no calibration. A file with some facevib keys but a missing or malformed one is an
error (:class:`MetadataError` naming the key), never a silent default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from facevib import contract
from facevib.contract import EMBEDDING_OUTPUT, QUALITY_OUTPUT, SCHEMA_VERSION, UNCERTAINTY_OUTPUT
from facevib.contract import METADATA_KEYS as _KEYS
from facevib.contract import METADATA_PREFIX as PREFIX

__all__ = [
    "MetadataError",
    "MissingMetadataError",
    "Calibration",
    "HeldOut",
    "PROTOCOLS",
    "PRECISIONS",
    "IdentificationCalibration",
    "Parity",
    "Precision",
    "ModelMetadata",
    "default_preprocess",
    "read_metadata",
]


class MetadataError(ValueError):
    """A facevib metadata key is missing or malformed; the message names the key."""


class MissingMetadataError(MetadataError):
    """The file carries no ``facevib.`` metadata at all (e.g. a plain insightface ONNX file)."""


def default_preprocess(input_size: int = 112) -> dict[str, Any]:
    """The preprocessing facevib trains with (and insightface clients feed): RGB, NCHW,
    ``(pixel - 127.5) / 127.5`` per channel, crops aligned to the ArcFace 5-point template."""
    try:
        template = contract.arcface_template(int(input_size))
    except ValueError as err:
        raise MetadataError(f"{_KEYS['input_size']}: {err}") from None
    return {
        "color": contract.COLOR,
        "layout": contract.LAYOUT,
        "mean": list(contract.MEAN),
        "std": list(contract.STD),
        "alignment": contract.ALIGNMENT,
        "template": template,
    }


def _finite(value: Any, key: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise MetadataError(f"{key}: expected a finite number, got {value!r}")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise MetadataError(f"{key}: {value} is outside [{low}, {high}]")
    return value


def _count(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MetadataError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


PROTOCOLS: tuple[str, ...] = ("single_image", "template")


@dataclass(frozen=True)
class HeldOut:
    """Rates of a calibrated threshold on identities the threshold never saw.

    Single-image calibration splits the identities in two: the threshold is read off one half,
    and these are the counts and rates on the other half's pairs, with 95% Wilson intervals
    (``[low, high]``), so an operator sees what the threshold does on new people.
    """

    identities: int
    impostor_pairs: int
    genuine_pairs: int
    false_accepts: int
    true_accepts: int
    fpr: float
    fpr_interval: tuple[float, float]
    tpr: float
    tpr_interval: tuple[float, float]

    def __post_init__(self) -> None:
        key = PREFIX + "calibration.holdout"
        _count(self.identities, f"{key}.identities", 0)
        _count(self.impostor_pairs, f"{key}.impostor_pairs", 1)
        _count(self.genuine_pairs, f"{key}.genuine_pairs", 1)
        _count(self.false_accepts, f"{key}.false_accepts", 0)
        _count(self.true_accepts, f"{key}.true_accepts", 0)
        _finite(self.fpr, f"{key}.fpr", 0.0, 1.0)
        _finite(self.tpr, f"{key}.tpr", 0.0, 1.0)
        for name in ("fpr_interval", "tpr_interval"):
            value = getattr(self, name)
            if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
                raise MetadataError(f"{key}.{name}: expected [low, high], got {value!r}")
            low, high = (_finite(v, f"{key}.{name}", 0.0, 1.0) for v in value)
            if low > high:
                raise MetadataError(f"{key}.{name}: low {low} > high {high}")
            object.__setattr__(self, name, (low, high))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldOut:
        """Build from the JSON object stored under ``facevib.calibration.holdout``."""
        return cls(**_fields_of(cls, data, PREFIX + "calibration.holdout"))


@dataclass(frozen=True)
class Calibration:
    """A cosine decision threshold measured on labelled pairs: accept iff ``cosine > threshold``.

    Read off the impostor scores exactly (``facevib.eval.roc.tpr_at_fpr``): with ``n`` impostor
    pairs, ``floor(target_fpr * n)`` may be accepted. ``fpr`` and ``tpr`` are the rates actually
    reached at ``threshold`` on the calibration pairs (``fpr <= target_fpr``). ``resolved`` is
    True when ``target_fpr * impostor_pairs >= 1``: otherwise no impostor may be accepted at
    all, the threshold is the largest impostor score, and the pairs cannot tell ``target_fpr``
    from FPR 0 (the threshold is then stricter than needed). ``source`` names the data.

    ``protocol`` says which score the threshold is for: ``"single_image"`` (one image per side,
    no flip: the cosine ``/v1/verify`` computes) or ``"template"`` (IJB 1:1 template cosines:
    image + flip, several images averaged, a different and much tighter distribution). A file
    written before the field existed reads as ``"template"``, the reading the server never
    applies to single images. ``holdout`` holds the threshold's rates on held-out identities
    (:class:`HeldOut`), None when the data could not be split by identity.
    """

    threshold: float
    target_fpr: float
    fpr: float
    tpr: float
    impostor_pairs: int
    genuine_pairs: int
    resolved: bool
    source: str
    protocol: str = "template"
    holdout: HeldOut | None = None

    def __post_init__(self) -> None:
        key = PREFIX + "calibration"
        _check_measured(self, key, ("target_fpr", "fpr", "tpr"), ("impostor_pairs", "genuine_pairs"))
        if self.protocol not in PROTOCOLS:
            raise MetadataError(f"{key}.protocol: expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.holdout is not None and not isinstance(self.holdout, HeldOut):
            raise MetadataError(f"{key}.holdout: expected a HeldOut, got {type(self.holdout).__name__}")

    @property
    def single_image(self) -> bool:
        """Whether the threshold applies to the cosine of two single-image embeddings."""
        return self.protocol == "single_image"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Build from the JSON object stored under ``facevib.calibration``."""
        fields = _fields_of(cls, data, PREFIX + "calibration", optional=("protocol", "holdout"))
        if fields.get("holdout") is not None:
            fields["holdout"] = HeldOut.from_dict(fields["holdout"])
        return cls(**fields)


def _check_measured(record: Any, key: str, rates: Sequence[str], counts: Sequence[str]) -> None:
    """The checks every stored calibration shares: ``threshold`` a cosine, ``rates`` in [0, 1],
    ``counts`` >= 1, ``resolved`` a bool and ``source`` a string; errors name ``key.field``."""
    _finite(record.threshold, f"{key}.threshold", -1.0, 1.0)
    for name in rates:
        _finite(getattr(record, name), f"{key}.{name}", 0.0, 1.0)
    for name in counts:
        _count(getattr(record, name), f"{key}.{name}", 1)
    if not isinstance(record.resolved, bool):
        raise MetadataError(f"{key}.resolved: expected true or false, got {record.resolved!r}")
    if not isinstance(record.source, str):
        raise MetadataError(f"{key}.source: expected a string, got {record.source!r}")


def _fields_of(cls: type, data: Any, key: str, optional: Sequence[str] = ()) -> dict[str, Any]:
    """The dataclass ``cls``'s fields read from the JSON object ``data`` (``optional`` ones may
    be absent and keep their defaults)."""
    if not isinstance(data, Mapping):
        raise MetadataError(f"{key}: expected a JSON object, got {type(data).__name__}")
    names = [f.name for f in cls.__dataclass_fields__.values()]
    missing = [n for n in names if n not in data and n not in optional]
    if missing:
        raise MetadataError(f"{key}: missing field(s) {', '.join(missing)}")
    return {n: data[n] for n in names if n in data}


@dataclass(frozen=True)
class IdentificationCalibration:
    """The open-set (1:N) threshold at a target false positive identification rate.

    A search answers "subject s" iff its best subject score is ``> threshold``. Measured on
    labelled searches of a gallery: ``non_mated`` searches of people not enrolled (FPIR: the
    fraction whose best score is above the threshold, ``fpir <= target_fpir``) and ``mated``
    searches (``tpir``: the fraction whose mate ranks first and scores above it).
    ``resolved`` is True when ``target_fpir * non_mated >= 1``; ``source`` names the data.
    """

    threshold: float
    target_fpir: float
    fpir: float
    tpir: float
    non_mated: int
    mated: int
    resolved: bool
    source: str

    def __post_init__(self) -> None:
        _check_measured(self, PREFIX + "identification", ("target_fpir", "fpir", "tpir"), ("non_mated", "mated"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentificationCalibration:
        """Build from the JSON object stored under ``facevib.identification``."""
        key = PREFIX + "identification"
        if not isinstance(data, Mapping):
            raise MetadataError(f"{key}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in cls.__dataclass_fields__.values()]
        missing = [n for n in names if n not in data]
        if missing:
            raise MetadataError(f"{key}: missing field(s) {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})


PRECISIONS: tuple[str, ...] = ("float32", "float16")


@dataclass(frozen=True)
class Parity:
    """How closely a float16 graph's embeddings follow its float32 graph's, measured at export.

    Both graphs embedded the same ``images`` aligned face crops (``source`` names them) once
    each, no flip, on ONNX Runtime's ``provider``; ``min_cosine`` and ``mean_cosine`` are over
    the per-image cosines between the two embeddings. The export is refused when
    ``min_cosine < bound``. ``note`` says what that provider computes in float16.
    """

    images: int
    min_cosine: float
    mean_cosine: float
    bound: float
    provider: str
    source: str
    note: str

    def __post_init__(self) -> None:
        key = PREFIX + "precision.parity"
        _count(self.images, f"{key}.images", 1)
        for name in ("min_cosine", "mean_cosine", "bound"):
            _finite(getattr(self, name), f"{key}.{name}", -1.0, 1.0)
        for name in ("provider", "source", "note"):
            if not isinstance(getattr(self, name), str):
                raise MetadataError(f"{key}.{name}: expected a string, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Precision:
    """The arithmetic of the graph: ``weights`` (and activations) ``"float32"`` or ``"float16"``.

    ``io`` is the type of the ``data`` input and of the outputs: ``"float32"`` for both kinds of
    file (a float16 graph casts at its edges), so clients feed and read it the same way.
    ``parity`` is the float16 graph's measured agreement with the float32 one (None for float32).
    """

    weights: str = "float32"
    io: str = "float32"
    parity: Parity | None = None

    def __post_init__(self) -> None:
        key = PREFIX + "precision"
        for name in ("weights", "io"):
            if getattr(self, name) not in PRECISIONS:
                raise MetadataError(
                    f"{key}.{name}: expected one of {', '.join(PRECISIONS)}, got {getattr(self, name)!r}"
                )
        if self.parity is not None and not isinstance(self.parity, Parity):
            raise MetadataError(f"{key}.parity: expected a Parity, got {type(self.parity).__name__}")
        if (self.weights == "float16") != (self.parity is not None):
            raise MetadataError(f"{key}.parity: must be given exactly for float16 weights (weights {self.weights!r})")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Precision:
        """Build from the JSON object stored under ``facevib.precision``."""
        fields = _fields_of(cls, data, PREFIX + "precision", optional=("io", "parity"))
        if fields.get("parity") is not None:
            fields["parity"] = Parity(**_fields_of(Parity, fields["parity"], PREFIX + "precision.parity"))
        return cls(**fields)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a client needs to feed a facevib ONNX file and read its outputs.

    ``outputs`` are the graph's output names in order; the first is the (not normalised)
    embedding. ``uncertainty`` says what the ``uncertainty`` output measures (None without it),
    ``quality`` what the ``quality`` output measures and how it is scaled to [0, 1] (None without it).
    """

    facevib_version: str
    model_name: str
    arch: dict[str, Any]
    embedding_dim: int
    input_size: int
    preprocess: dict[str, Any]
    config_digest: str | None = None
    outputs: list[str] = field(default_factory=lambda: [EMBEDDING_OUTPUT])
    uncertainty: dict[str, Any] | None = None
    calibration: Calibration | None = None
    identification: IdentificationCalibration | None = None
    precision: Precision | None = None
    quality: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("facevib_version", "model_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise MetadataError(f"{_KEYS[name]}: expected a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.arch, dict):
            raise MetadataError(f"{_KEYS['arch']}: expected a JSON object, got {self.arch!r}")
        _count(self.embedding_dim, _KEYS["embedding_dim"], 1)
        _count(self.input_size, _KEYS["input_size"], 1)
        _check_preprocess(self.preprocess)
        if self.config_digest is not None and not (
            isinstance(self.config_digest, str)
            and len(self.config_digest) == 64
            and all(c in "0123456789abcdef" for c in self.config_digest)
        ):
            raise MetadataError(
                f"{_KEYS['config_digest']}: expected 64 lowercase hex digits, got {self.config_digest!r}"
            )
        outputs = self.outputs
        if (
            not isinstance(outputs, list)
            or not outputs
            or not all(isinstance(o, str) and o for o in outputs)
            or len(set(outputs)) != len(outputs)
        ):
            raise MetadataError(f"{_KEYS['outputs']}: expected a non-empty list of distinct names, got {outputs!r}")
        has_uncertainty = UNCERTAINTY_OUTPUT in outputs
        if has_uncertainty and outputs.index(UNCERTAINTY_OUTPUT) == 0:
            raise MetadataError(f"{_KEYS['outputs']}: the first output must be the embedding, got {outputs!r}")
        for name, output in (("uncertainty", UNCERTAINTY_OUTPUT), ("quality", QUALITY_OUTPUT)):
            value = getattr(self, name)
            if (output in outputs) != (value is not None):
                raise MetadataError(
                    f"{_KEYS[name]}: must be given exactly when {output!r} is an output "
                    f"(outputs {outputs!r}, {name} {'set' if value is not None else 'absent'})"
                )
            if value is not None and not isinstance(value, dict):
                raise MetadataError(f"{_KEYS[name]}: expected a JSON object, got {value!r}")
        if QUALITY_OUTPUT in outputs and outputs.index(QUALITY_OUTPUT) == 0:
            raise MetadataError(f"{_KEYS['outputs']}: the first output must be the embedding, got {outputs!r}")
        if self.calibration is not None and not isinstance(self.calibration, Calibration):
            raise MetadataError(
                f"{_KEYS['calibration']}: expected a Calibration, got {type(self.calibration).__name__}"
            )
        if self.identification is not None and not isinstance(self.identification, IdentificationCalibration):
            raise MetadataError(
                f"{_KEYS['identification']}: expected an IdentificationCalibration, "
                f"got {type(self.identification).__name__}"
            )
        if self.precision is not None and not isinstance(self.precision, Precision):
            raise MetadataError(f"{_KEYS['precision']}: expected a Precision, got {type(self.precision).__name__}")

    @property
    def weights_precision(self) -> str:
        """``"float16"`` or ``"float32"`` (files without ``facevib.precision`` are float32)."""
        return self.precision.weights if self.precision is not None else "float32"

    @classmethod
    def default(
        cls,
        embedding_dim: int,
        input_size: int = 112,
        *,
        model_name: str = "external",
        outputs: Sequence[str] = (EMBEDDING_OUTPUT,),
    ) -> ModelMetadata:
        """Metadata for a file that carries none: insightface's conventions, no calibration.

        ``facevib_version`` is ``"unknown"`` and ``arch`` is empty: nothing is known about it.
        """
        return cls(
            facevib_version="unknown",
            model_name=model_name,
            arch={},
            embedding_dim=int(embedding_dim),
            input_size=int(input_size),
            preprocess=default_preprocess(int(input_size)),
            outputs=list(outputs),
        )

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries: keys prefixed ``facevib.``, JSON for structured values.

        Optional fields that are None are left out (so they read back as None).
        """
        props = {
            PREFIX + "schema": SCHEMA_VERSION,
            _KEYS["facevib_version"]: self.facevib_version,
            _KEYS["model_name"]: self.model_name,
            _KEYS["arch"]: _dumps(self.arch),
            _KEYS["embedding_dim"]: str(self.embedding_dim),
            _KEYS["input_size"]: str(self.input_size),
            _KEYS["preprocess"]: _dumps(self.preprocess),
            _KEYS["outputs"]: _dumps(self.outputs),
        }
        if self.config_digest is not None:
            props[_KEYS["config_digest"]] = self.config_digest
        if self.uncertainty is not None:
            props[_KEYS["uncertainty"]] = _dumps(self.uncertainty)
        if self.quality is not None:
            props[_KEYS["quality"]] = _dumps(self.quality)
        if self.calibration is not None:
            props[_KEYS["calibration"]] = _dumps(asdict(self.calibration))
        if self.identification is not None:
            props[_KEYS["identification"]] = _dumps(asdict(self.identification))
        if self.precision is not None:
            props[_KEYS["precision"]] = _dumps(asdict(self.precision))
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """Parse ``metadata_props`` (e.g. ONNX Runtime's ``custom_metadata_map``).

        Keys without the ``facevib.`` prefix are ignored (other tools may add their own).

        Raises:
            MissingMetadataError: no ``facevib.`` key at all (see :func:`read_metadata`).
            MetadataError: a required key is missing or a value is malformed (the message
                names the key), or the schema version is not one this code reads.
        """
        ours = {k: v for k, v in props.items() if k.startswith(PREFIX)}
        if not ours:
            raise MissingMetadataError(
                "the model has no facevib metadata (no 'facevib.*' keys in metadata_props); "
                "read_metadata() falls back to insightface's defaults for such files"
            )
        schema = ours.get(PREFIX + "schema")
        if schema != SCHEMA_VERSION:
            raise MetadataError(f"{PREFIX}schema: expected {SCHEMA_VERSION!r}, got {schema!r}")

        def text(name: str, required: bool = True) -> str | None:
            key = _KEYS[name]
            if key not in ours:
                if required:
                    raise MetadataError(f"{key}: missing from the model's metadata")
                return None
            return ours[key]

        def number(name: str) -> int:
            raw = text(name)
            try:
                return int(raw)
            except ValueError:
                raise MetadataError(f"{_KEYS[name]}: expected a decimal integer, got {raw!r}") from None

        def structured(name: str, required: bool = True) -> Any:
            raw = text(name, required)
            if raw is None:
                return None
            try:
                return json.loads(raw)
            except json.JSONDecodeError as err:
                raise MetadataError(f"{_KEYS[name]}: not valid JSON ({err.msg} at offset {err.pos})") from None

        calibration = structured("calibration", required=False)
        identification = structured("identification", required=False)
        precision = structured("precision", required=False)
        return cls(
            facevib_version=text("facevib_version"),
            model_name=text("model_name"),
            arch=structured("arch"),
            embedding_dim=number("embedding_dim"),
            input_size=number("input_size"),
            preprocess=structured("preprocess"),
            config_digest=text("config_digest", required=False),
            outputs=structured("outputs"),
            uncertainty=structured("uncertainty", required=False),
            quality=structured("quality", required=False),
            calibration=None if calibration is None else Calibration.from_dict(calibration),
            identification=None if identification is None else IdentificationCalibration.from_dict(identification),
            precision=None if precision is None else Precision.from_dict(precision),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (``calibration`` as a dict or None), e.g. for ``/v1/info``."""
        return asdict(self)


def _dumps(value: Any) -> str:
    # Compact and key-sorted so the same metadata always gives the same bytes; NaN is not JSON.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_preprocess(preprocess: Any) -> None:
    key = _KEYS["preprocess"]
    if not isinstance(preprocess, dict):
        raise MetadataError(f"{key}: expected a JSON object, got {preprocess!r}")
    missing = [n for n in ("color", "layout", "mean", "std", "alignment", "template") if n not in preprocess]
    if missing:
        raise MetadataError(f"{key}: missing field(s) {', '.join(missing)}")
    if preprocess["color"] not in ("RGB", "BGR"):
        raise MetadataError(f"{key}.color: expected 'RGB' or 'BGR', got {preprocess['color']!r}")
    if preprocess["layout"] != "NCHW":
        raise MetadataError(f"{key}.layout: expected 'NCHW', got {preprocess['layout']!r}")
    for name in ("mean", "std"):
        values = preprocess[name]
        if not isinstance(values, list) or len(values) != 3:
            raise MetadataError(f"{key}.{name}: expected 3 numbers, got {values!r}")
        for value in values:
            _finite(value, f"{key}.{name}", 0.0 if name == "mean" else 1e-12)
    template = preprocess["template"]
    if not (
        isinstance(template, list) and len(template) == 5 and all(isinstance(p, list) and len(p) == 2 for p in template)
    ):
        raise MetadataError(f"{key}.template: expected 5 [x, y] points, got {template!r}")
    for point in template:
        for value in point:
            _finite(value, f"{key}.template")


def read_metadata(
    source: Any,
    input_size: int | None = None,
    embedding_dim: int | None = None,
) -> ModelMetadata:
    """The model's metadata, or insightface's defaults when the file has no facevib metadata.

    Args:
        source: an ``onnxruntime.InferenceSession`` (anything with ``get_modelmeta()``) or a
            mapping of metadata props.
        input_size, embedding_dim: used for the fallback only; when None they are read from
            the session's input and first output shapes (a mapping source then needs them).

    Raises:
        MetadataError: malformed facevib metadata, or a fallback whose sizes are unknown.
    """
    has_session = hasattr(source, "get_modelmeta")
    props = source.get_modelmeta().custom_metadata_map if has_session else source
    try:
        return ModelMetadata.from_props(props)
    except MissingMetadataError:
        pass
    outputs: Sequence[str] = (EMBEDDING_OUTPUT,)
    if has_session:
        shape = source.get_inputs()[0].shape
        out_shape = source.get_outputs()[0].shape
        # Only the first output is known to be the embedding; what any other output means is
        # not described by a file without facevib metadata, so it is not advertised.
        outputs = [source.get_outputs()[0].name]
        if input_size is None and len(shape) == 4 and isinstance(shape[2], int):
            input_size = shape[2]
        if embedding_dim is None and len(out_shape) == 2 and isinstance(out_shape[1], int):
            embedding_dim = out_shape[1]
    if input_size is None or embedding_dim is None:
        raise MetadataError(
            f"the model has no facevib metadata and its sizes are unknown (input_size={input_size}, "
            f"embedding_dim={embedding_dim}); pass them to read_metadata"
        )
    return ModelMetadata.default(embedding_dim, input_size, outputs=outputs)
