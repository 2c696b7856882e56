"""A class map's GDAL PAM sidecar (``<file>.aux.xml``): the class names and attribute table GIS tools read.

GeoTIFF has no place for category names or a raster attribute table (RAT): GDAL keeps them in its
Persistent Auxiliary Metadata file beside the raster, which gdalinfo, QGIS and ArcGIS read with it, and
rasterio cannot write them at all. So the class COG writer writes that file itself:

    <PAMDataset><PAMRasterBand band="1">
      <CategoryNames>       one name per pixel value 0..max class id ("" where no class)
      <GDALRasterAttributeTable tableType="thematic">
                            Value / Class_Name / Red / Green / Blue / Alpha, one row per class

A sidecar belongs to its raster: written before the raster is moved into place, removed with it
(:func:`sidecar_path` names it; job folders are deleted whole, results never list it).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

#: GDAL's suffix for a PAM sidecar, appended to the raster's whole name
SIDECAR_SUFFIX = ".aux.xml"

# GDALRATFieldType and GDALRATFieldUsage (gdal.h): the numbers a PAM file stores
_INTEGER, _STRING = 0, 2
_MINMAX, _NAME, _RED, _GREEN, _BLUE, _ALPHA = 5, 2, 6, 7, 8, 9
#: the attribute table's columns: (name, type, usage), the names QGIS and ArcGIS look for
RAT_FIELDS = (
    ("Value", _INTEGER, _MINMAX),
    ("Class_Name", _STRING, _NAME),
    ("Red", _INTEGER, _RED),
    ("Green", _INTEGER, _GREEN),
    ("Blue", _INTEGER, _BLUE),
    ("Alpha", _INTEGER, _ALPHA),
)


def sidecar_path(raster: str | Path) -> Path:
    """Where GDAL looks for a raster's PAM sidecar: ``<name>.aux.xml`` beside it."""
    raster = Path(raster)
    return raster.with_name(raster.name + SIDECAR_SUFFIX)


def class_sidecar_xml(classes: Sequence[Any]) -> str:
    """The PAM document giving band 1 the classes' category names and a thematic attribute table.

    ``classes``: core.raster.cog.ClassStyle values (an id, a name, an rgb colour each)."""
    dataset = ET.Element("PAMDataset")
    band = ET.SubElement(dataset, "PAMRasterBand", band="1")
    # GDAL indexes category names by pixel value, so values without a class get an empty name
    by_id = {c.id: c.name for c in classes}
    names = ET.SubElement(band, "CategoryNames")
    for value in range(max(by_id, default=-1) + 1):
        ET.SubElement(names, "Category").text = by_id.get(value, "")
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for i, (name, kind, usage) in enumerate(RAT_FIELDS):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for row_index, c in enumerate(sorted(classes, key=lambda c: c.id)):
        row = ET.SubElement(rat, "Row", index=str(row_index))
        for value in (c.id, c.name, *c.rgb, 255):
            ET.SubElement(row, "F").text = str(value)
    ET.indent(dataset)
    return ET.tostring(dataset, encoding="unicode") + "\n"
