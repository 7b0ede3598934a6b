"""Instance labelling of a foreground mask that arrives in row bands: connected components merged across the seams
between bands and numbered as on the whole mask, then grown band by band."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import expand_labels

_FOUR = ndi.generate_binary_structure(2, 1)


class SeamLabeler:
    """Connected components (4-connected) of a foreground mask that arrives in row bands, numbered as
    ``scipy.ndimage.label`` numbers them on the whole mask (raster order of each object's first pixel).

    :meth:`add` takes the bands in order (pass 1); :meth:`finish` merges the pieces across seams and drops objects
    under ``min_size``; :meth:`labels` gives the final labels of the stored bands again (pass 2). Pieces are numbered
    band by band in the order ``ndi.label`` finds them, which is the raster order of their first pixels, so an object's
    first pixel is that of its lowest-numbered piece (its root). Memory: the bands are kept one bit per pixel in a
    temporary file under ``tmp_dir``; a piece inside its band (touching neither its first nor its last row) is a whole
    object, decided at once and kept as one bit; only pieces on band rims are remembered (number, size, seam contacts).
    """

    def __init__(self, width: int, tmp_dir: str | Path | None = None) -> None:
        self.width = width
        self._file = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115 (closed by close())
        self._bands: list[tuple[int, int, int, int]] = []  # (height, file offset, pieces before, pieces in band)
        self._kept: list[np.ndarray] = []  # per band: packed bits, set for a kept whole piece inside the band
        self._rim: list[np.ndarray] = []  # numbers of the pieces on band rims (ascending)
        self._rim_size: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []
        self._last: np.ndarray | None = None
        self._min_size = 0
        self.pieces = 0

    def add(self, mask: np.ndarray, min_size: int = 0) -> None:
        """Label the next band (h, W) of the mask; record its rim pieces and seam contacts (``min_size`` decides
        the pieces inside the band, and must be the same for every band and :meth:`finish`)."""
        self._min_size = min_size
        packed = np.packbits(mask, axis=1)
        lab, n = ndi.label(mask, structure=_FOUR)
        self._bands.append((mask.shape[0], self._file.tell(), self.pieces, n))
        self._file.write(packed.tobytes())
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        rim = np.union1d(lab[0], lab[-1])
        rim = rim[rim > 0]
        inside = sizes >= min_size
        inside[0] = False
        inside[rim] = False
        self._kept.append(np.packbits(inside[1:]))
        self._rim.append(rim.astype(np.int64) + self.pieces)
        self._rim_size.append(sizes[rim].astype(np.int64))
        top = np.where(lab[0] > 0, lab[0].astype(np.int64) + self.pieces, 0)
        if self._last is not None:
            both = (self._last > 0) & (top > 0)
            if both.any():
                self._pairs.append(np.unique(np.stack([self._last[both], top[both]], 1), axis=0))
        self._last = np.where(lab[-1] > 0, lab[-1].astype(np.int64) + self.pieces, 0)
        self.pieces += n

    def finish(self) -> int:
        """Merge the rim pieces over the seam contacts; the number of objects kept."""
        rim = np.concatenate(self._rim) if self._rim else np.zeros(0, np.int64)
        sizes = np.concatenate(self._rim_size) if self._rim else np.zeros(0, np.int64)
        m = len(rim)
        if self._pairs:
            pairs = np.searchsorted(rim, np.concatenate(self._pairs))
            graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
            _, comp = connected_components(graph, directed=False)
        else:
            comp = np.arange(m)
        _, first, comp = np.unique(comp, return_index=True, return_inverse=True)
        self._root = rim[first][comp]  # each rim piece's root: the lowest piece of its object
        keep = np.bincount(comp, weights=sizes, minlength=len(first)) >= self._min_size
        self._kept_roots = rim[first][keep]  # ascending: rim is sorted and first picks each object's lowest piece
        self._rim_all = rim
        inside = sum(int(np.unpackbits(k).sum()) for k in self._kept)
        return inside + len(self._kept_roots)

    def labels(self) -> Iterator[np.ndarray]:
        """The final labels (h, W) int32 of every band, in order (after :meth:`finish`)."""
        kept_before = 0
        root_number: dict[int, int] = {}
        for (h, offset, base, n), kept_bits in zip(self._bands, self._kept, strict=True):
            self._file.seek(offset)
            packed = np.frombuffer(self._file.read(h * ((self.width + 7) // 8)), np.uint8).reshape(h, -1)
            lab, _ = ndi.label(np.unpackbits(packed, axis=1, count=self.width).astype(bool), structure=_FOUR)
            kept = np.unpackbits(kept_bits, count=n).astype(bool)
            lo, hi = np.searchsorted(self._kept_roots, [base + 1, base + n + 1])
            kept[self._kept_roots[lo:hi] - base - 1] = True
            number = np.where(kept, kept_before + np.cumsum(kept), 0)
            kept_before += int(kept.sum())
            lo, hi = np.searchsorted(self._rim_all, [base + 1, base + n + 1])
            for piece, root in zip(self._rim_all[lo:hi].tolist(), self._root[lo:hi].tolist(), strict=True):
                if root > base:
                    root_number[root] = int(number[root - base - 1])
                number[piece - base - 1] = root_number[root]
            lookup = np.concatenate([[0], number]).astype(np.int64)
            yield lookup[lab].astype(np.int32)

    def close(self) -> None:
        self._file.close()


def expand_bands(bands: Iterable[np.ndarray], distance: int) -> Iterator[np.ndarray]:
    """``skimage.segmentation.expand_labels`` of the image made of ``bands`` (row bands in order), band by band.

    A grown pixel takes the label of the nearest labelled pixel within ``distance``, which lies at most ``distance``
    rows away, so each band is grown inside a window with ``distance`` rows of context above and below.
    """
    if distance <= 0:
        yield from bands
        return
    held: list[np.ndarray] = []  # bands from the first one a pending band's window needs
    pending = 0  # index into held of the next band to grow
    iterator = iter(bands)
    exhausted = False
    while True:
        if not exhausted:
            band = next(iterator, None)
            if band is None:
                exhausted = True
            else:
                held.append(band)
        rows = np.cumsum([0] + [b.shape[0] for b in held])
        while pending < len(held) and (exhausted or rows[-1] - rows[pending + 1] >= distance):
            lo, hi = max(0, rows[pending] - distance), min(rows[-1], rows[pending + 1] + distance)
            window = np.concatenate(held)[lo:hi] if len(held) > 1 else held[0][lo:hi]
            grown = expand_labels(window, distance=distance)
            yield grown[rows[pending] - lo : rows[pending + 1] - lo].astype(np.int32)
            pending += 1
            while pending > 0 and rows[1] <= rows[pending] - distance:
                held.pop(0)
                rows = rows[1:] - rows[1]
                pending -= 1
        if exhausted and pending >= len(held):
            return
