"""Streaming overlap-tile segmentation of images larger than memory.

The image is read one band of tile rows at a time (:mod:`.sources`: a TIFF / BigTIFF through tifffile's memory map
when its pixels are stored contiguously, else through its zarr view; a zarr array directly), normalised with statistics
computed over the whole image in row bands (:mod:`.statistics`), the network runs on the same tiles, in the same
batches, as :func:`foveal.inference.tiling.predict_tiled` on the whole image (:mod:`.bands`), and the label image is
written tile by tile to a tiled BigTIFF or a zarr array (:mod:`.writers`). Memory holds one band of input and output
rows (the tile height times the image width) and the tile batch; it does not grow with the image height.
:func:`segment_large` (:mod:`.driver`) ties these together.

Instances are the connected components of the predicted foreground, as :func:`foveal.data.instances.
instances_from_classes` finds them on the whole image, and numbered the same (:mod:`.seams`):

1. Pass 1 labels the foreground of each band (4-connected), records each piece's pixel count, and the pairs of pieces
   that touch across the seam between two bands; the band's foreground is kept, one bit per pixel, in a temporary
   file.
2. The pieces are merged over the seam pairs (connected components of the piece graph). Pieces are numbered band by
   band in raster order of their first pixel, so a merged object's first pixel is that of its lowest piece, and
   numbering the objects by their lowest piece is the whole-image raster numbering; objects under ``min_size``
   pixels are dropped before numbering, as on the whole image.
3. Pass 2 labels each band again, maps its pieces to the final numbers, and grows them by ``expand`` pixels with the
   ``expand`` rows above and below as context, which are all the rows a grown pixel can reach.
"""

from foveal.inference.stream.bands import class_map, logit_bands
from foveal.inference.stream.driver import StreamResult, check_source, segment_large
from foveal.inference.stream.seams import SeamLabeler, expand_bands
from foveal.inference.stream.sources import Source, SourceError, image_size, open_source
from foveal.inference.stream.statistics import normalizer, order_statistics
from foveal.inference.stream.writers import (
    OUTPUT_TILE,
    BandWriter,
    label_dtype,
    output_format,
    write_labels_streaming,
)

__all__ = [
    "OUTPUT_TILE",
    "BandWriter",
    "SeamLabeler",
    "Source",
    "SourceError",
    "StreamResult",
    "check_source",
    "class_map",
    "expand_bands",
    "image_size",
    "label_dtype",
    "logit_bands",
    "normalizer",
    "open_source",
    "order_statistics",
    "output_format",
    "segment_large",
    "write_labels_streaming",
]
