"""What QGIS makes of our maps, for tests/service/test_qgis.py: run by Debian's python3 (PyQGIS lives there,
not in the project's venv), offscreen; prints one JSON object.

    qgis_client.py palette COG
        -> {"valid", "renderer", "classes": [[value, label, [r, g, b, a]], ...]}   (the layer's default style)
    qgis_client.py render TILE_URL ZMIN ZMAX XMIN YMIN XMAX YMAX SIZE OUT.png
        -> {"valid", "errors"}   an XYZ layer on TILE_URL (no header) drawn over the EPSG:3857 box into OUT.png
"""
import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402  (needs the platform chosen first)
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsDataSourceUri,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402


def palette(path):
    layer = QgsRasterLayer(path, "classes")
    renderer = layer.renderer()
    kind = renderer.type() if renderer else None
    classes = [[c.value, c.label, list(c.color.getRgb())] for c in renderer.classes()] if kind == "paletted" else []
    return {"valid": layer.isValid(), "renderer": kind, "classes": classes}


def render(url, zmin, zmax, xmin, ymin, xmax, ymax, size, out):
    # the way QGIS's own XYZ connections spell a layer: the template URL as one encoded parameter
    uri = QgsDataSourceUri()
    uri.setParam("type", "xyz")
    uri.setParam("url", url)
    uri.setParam("zmin", zmin)
    uri.setParam("zmax", zmax)
    layer = QgsRasterLayer(bytes(uri.encodedUri()).decode(), "tiles", "wms")
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    settings.setExtent(QgsRectangle(float(xmin), float(ymin), float(xmax), float(ymax)))
    settings.setOutputSize(QSize(int(size), int(size)))
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(out, "PNG")
    return {"valid": layer.isValid(), "errors": [e.message for e in job.errors()]}


def main():
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    try:
        command, *args = sys.argv[1:]
        result = {"palette": palette, "render": render}[command](*args)
    finally:
        app.exitQgis()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
