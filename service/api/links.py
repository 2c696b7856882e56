"""Every URL the API hands out is built here, so routes (and the later tile routes) agree."""
from __future__ import annotations

from urllib.parse import quote

from service.api.schemas import Link
from service.result_ids import result_id

#: the tile matrix set used in tile links (TiTiler-compatible paths)
DEFAULT_TMS = "WebMercatorQuad"


def job(base: str, job_id) -> str:
    return f"{base}/v1/jobs/{job_id}"


def job_links(base: str, j) -> list[Link]:
    links = [Link(href=job(base, j.id), rel="self", type="application/json", title="job status")]
    if j.status == "successful":
        links.append(Link(href=f"{job(base, j.id)}/results", rel="results", type="application/json"))
    return links


def job_file(base: str, job_id, relpath: str) -> str:
    return f"{job(base, job_id)}/files/{quote(relpath)}"


def result(base: str, job_id, name: str) -> str:
    return f"{base}/v1/results/{quote(result_id(job_id, name), safe='')}"


def result_links(base: str, job_id, relpath: str, name: str, kind: str = "classes",
                 signed: str | None = None) -> dict[str, str]:
    """download / info / statistics / preview / tilejson / tiles for one predicted COG (`name`: its id within the job),
    and with `signed` (a signature's query) `tilejson_signed`, which opens with no header until it expires.

    A probability COG gets only its download: the tile and point routes read class maps, and a click on
    its class map already reports the probabilities.
    """
    if kind != "classes":
        return {"download": job_file(base, job_id, relpath)}
    r = result(base, job_id, name)
    out = {
        "download": job_file(base, job_id, relpath),
        "info": f"{r}/info",
        "statistics": f"{r}/statistics",
        "preview": f"{r}/preview.png",
        "tilejson": f"{r}/{DEFAULT_TMS}/tilejson.json",
        "tiles": f"{r}/tiles/{DEFAULT_TMS}/{{z}}/{{x}}/{{y}}.png",
    }
    if signed:
        out["tilejson_signed"] = f"{out['tilejson']}?{signed}"
    return out


def jobs_page(base: str, offset: int, limit: int, total: int, **filters) -> list[Link]:
    q = "".join(f"&{k}={quote(str(v))}" for k, v in filters.items() if v is not None)
    links = [Link(href=f"{base}/v1/jobs?limit={limit}&offset={offset}{q}", rel="self")]
    if offset + limit < total:
        links.append(Link(href=f"{base}/v1/jobs?limit={limit}&offset={offset + limit}{q}", rel="next"))
    if offset > 0:
        links.append(Link(href=f"{base}/v1/jobs?limit={limit}&offset={max(0, offset - limit)}{q}", rel="prev"))
    return links


def dataset(base: str, ds_id) -> str:
    return f"{base}/v1/datasets/{ds_id}"


def scene(base: str, job_id, role: str, index: int) -> str:
    """A scene named in a job's spec, whose imagery the scene tile routes serve."""
    return f"{job(base, job_id)}/scenes/{role}/{index}"


def model(base: str, model_id) -> str:
    return f"{base}/v1/models/{model_id}"


def model_tilejson(base: str, model_id, dataset_id, tms: str = DEFAULT_TMS) -> str:
    """TileJSON of live tile inference: the model run on a registered dataset, tile by tile."""
    return f"{model(base, model_id)}/{tms}/tilejson.json?dataset={quote(str(dataset_id))}"


def model_tiles(base: str, model_id, dataset_id, tms: str = DEFAULT_TMS) -> str:
    return f"{model(base, model_id)}/tiles/{tms}/{{z}}/{{x}}/{{y}}.png?dataset={quote(str(dataset_id))}"


def stac_catalog(base: str) -> str:
    """The caller's static STAC catalog of job results (service/stac_catalog.py)."""
    return f"{base}/v1/stac"


def stac_collection(base: str, job_type: str) -> str:
    return f"{stac_catalog(base)}/{job_type}"


def stac_item(base: str, job_type: str, job_id, name: str) -> str:
    """A predicted scene as a STAC Item; its id is the result id (one path segment)."""
    return f"{stac_collection(base, job_type)}/{quote(result_id(job_id, name), safe='')}"


# ---- OGC API - Processes, under /ogcapi ---------------------------------------------------------------

def ogc(base: str) -> str:
    """The OGC API - Processes landing page."""
    return f"{base}/ogcapi"


def ogc_process(base: str, process_id: str) -> str:
    return f"{ogc(base)}/processes/{quote(process_id, safe='')}"


def ogc_job(base: str, job_id) -> str:
    return f"{ogc(base)}/jobs/{job_id}"
