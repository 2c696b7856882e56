"""Typed domain errors; the service maps them to HTTP codes in one table, the CLI to exit codes."""
from __future__ import annotations


class GeoadaptError(Exception):
    """Base of every error that a user's input (not a bug) can cause."""

    #: a short machine-readable name used in API error bodies and job records
    code = "geoadapt_error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SpecError(GeoadaptError):
    """A job spec that is malformed: unknown keys, bad values, missing files."""

    code = "invalid_spec"

    def __init__(self, message: str, *, field: str | None = None, problems: list[dict] | None = None):
        super().__init__(message, field=field)
        #: one {field, message} per problem, for APIs that show errors next to fields
        self.problems = problems or [{"field": field or "", "message": message}]

    def __str__(self) -> str:
        # each problem once with its field (the message may already be such a summary: not field + summary)
        return "; ".join(f"{p['field']}: {p['message']}" if p.get("field") else p["message"]
                         for p in self.problems[:5])


class RasterError(GeoadaptError):
    """Base for problems found while reading or checking raster data."""

    code = "invalid_raster"


class UnreadableRasterError(RasterError):
    """A file that cannot be opened or read as a raster (missing, truncated, corrupt, not an image)."""

    code = "unreadable_raster"


class RasterTooLargeError(RasterError):
    """A raster whose declared size is beyond the configured limit (decompression-bomb guard)."""

    code = "raster_too_large"


class MissingCRSError(RasterError):
    """Georeferencing is needed (reprojection, overlap, vector labels) but the file has no CRS."""

    code = "missing_crs"


class BandCountMismatchError(RasterError):
    """Scenes of a domain, or a scene and a model, disagree on the number of bands."""

    code = "band_count_mismatch"


class LabelValuesError(RasterError):
    """A label raster holds values that are not in the job's class list."""

    code = "label_values_outside_classes"


class NoOverlapError(RasterError):
    """Two rasters (image and labels, source and target) share no ground."""

    code = "no_overlap"


class EmptyRegionError(RasterError):
    """A region or AOI selects no valid pixels of a scene."""

    code = "empty_region"


class DataFetchError(GeoadaptError):
    """A real data package could not be fetched or failed its checksum."""

    code = "data_fetch_failed"


class BundleError(GeoadaptError):
    """A model bundle that is missing, incomplete or incompatible with the input."""

    code = "invalid_bundle"


class ConfigError(GeoadaptError):
    """An unknown model config name or an override that does not apply."""

    code = "invalid_config"


class NoBatchNormError(BundleError):
    """AdaBN asked of a model that has no BatchNorm layer: there would be nothing to re-estimate."""

    code = "no_batchnorm"

    def __init__(self, model: str, *, field: str | None = "bundle"):
        super().__init__(f"model {model} has no batch-norm layers; AdaBN re-estimates batch-norm statistics "
                         "and would change nothing", field=field)


class NotALabelShiftError(GeoadaptError):
    """A label-shift correction asked where the target's inputs changed, not only its class mix: moving the
    model's class frequencies would make its maps worse."""

    code = "not_a_label_shift"


class DevicesUnavailableError(GeoadaptError):
    """A job asks for more devices (``params.devices``) than the worker that runs it has."""

    code = "devices_unavailable"
