"""Omniglot: find or download the zips, decode them once into a cached array, split, sample tasks.

Omniglot (Lake et al. 2015, MIT license) has 1623 handwritten characters from 50 alphabets,
20 drawings each, as 105x105 1-bit PNGs (black strokes on white) in two zips:
``images_background.zip`` (964 characters) and ``images_evaluation.zip`` (659), laid out as
``images_background/<Alphabet>/character<NN>/<ID>_<DD>.png``.

Pipeline (MAML's protocol, Finn et al. 2017):

1. ``load_omniglot``  -> ``OmniglotData`` with ``images`` float32 (1623, 20, 28, 28),
   strokes = 1.0 and background = 0.0, plus per-character metadata. The first call decodes
   all 32,460 PNGs (a few seconds) and caches one compressed ``.npz``; later calls read only
   that file.
2. ``split_characters`` -> shuffled character indices: 1100 meta-train, 100 meta-validation,
   423 meta-test.
3. ``TaskSampler`` -> batches of N-way K-shot tasks in NHWC layout. With ``rotations=True``
   each character gives 4 classes (rotated by 0/90/180/270 degrees), which stay in the
   character's split.

This module works on host NumPy arrays; training code moves batches to the device.
Log lines (which folder, which checksums, cache hit or write) go to the logger
``numpy_amaml.omniglot`` at INFO level.
"""
import contextlib
import copy
import hashlib
import http.client
import io
import logging
import os
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

log = logging.getLogger(__name__)

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
SETS = ("background", "evaluation")
ZIP_NAMES = tuple(f"images_{name}.zip" for name in SETS)
OFFICIAL_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
CHECKSUM_FILES = (("SHA256SUMS", "sha256"), ("MD5SUMS", "md5"))  # first listed wins
ENV_VAR = "NUMPY_AMAML_OMNIGLOT_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / "data"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "omniglot"
DRAWINGS_PER_CHARACTER = 20
RESIZE_FILTER = "lanczos"          # Image.Resampling.LANCZOS, applied to the inverted image
PREPROCESS_VERSION = 1             # bump when the decoding below changes; it renames the cache
CACHE_FIELDS = ("images", "alphabets", "characters", "sets")


class OmniglotError(Exception):
    """Base class of every Omniglot data error."""


class OmniglotNotFoundError(OmniglotError, FileNotFoundError):
    """A data folder or zip is missing."""


class OmniglotChecksumError(OmniglotError, ValueError):
    """A zip's checksum differs from the expected one."""


class OmniglotFormatError(OmniglotError, ValueError):
    """A zip is corrupt, a PNG does not decode, or the layout is not Omniglot's."""


class OmniglotDownloadError(OmniglotError, OSError):
    """Downloading a zip failed."""


@dataclass
class OmniglotData:
    """Decoded Omniglot, one row per character.

    images:          float32 (num_characters, 20, image_size, image_size); strokes 1.0, background 0.0
    alphabets:       str (num_characters,), e.g. "Greek"
    characters:      str (num_characters,), e.g. "character07"
    sets:            str (num_characters,), "background" or "evaluation" (which zip)
    source:          the folder the zips came from, and how it was chosen
    checksum_source: "official md5" or "<SHA256SUMS|MD5SUMS> in <folder>"
    cache_path:      the .npz that holds (or now holds) the decoded arrays
    from_cache:      True when this call read the cache instead of the zips
    """
    images: np.ndarray
    alphabets: np.ndarray
    characters: np.ndarray
    sets: np.ndarray
    source: str
    checksum_source: str
    cache_path: Path
    from_cache: bool

    @property
    def num_characters(self):
        return self.images.shape[0]


# ----------------------------------------------------------------------------------------
# 1. Sources: which folder, which checksums, download
# ----------------------------------------------------------------------------------------

def _has_zips(folder):
    return all((folder / name).is_file() for name in ZIP_NAMES)


def resolve_data_dir(data_dir, cache_dir):
    """Choose the folder that holds (or will hold) the two zips -> (Path, how it was chosen).

    Order: the ``data_dir`` argument; the environment variable ``NUMPY_AMAML_OMNIGLOT_DIR``;
    ``cache_dir`` if it already holds both zips; ``SHARED_DATA_DIR`` (``<repo>/../shared/
    data/omniglot``) if it exists; else ``cache_dir``, where ``load_omniglot`` downloads them.
    """
    if data_dir is not None:
        return Path(data_dir), "data_dir argument"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"environment variable {ENV_VAR}"
    if _has_zips(cache_dir):
        return cache_dir, "cache folder"
    if SHARED_DATA_DIR.is_dir():
        return SHARED_DATA_DIR, "shared data folder beside the repository"
    return cache_dir, "cache folder (download target)"


def read_checksum_file(path):
    """Parse ``<hex>  <filename>`` lines (``sha256sum``/``md5sum`` output) -> {filename: hex}."""
    sums = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split(maxsplit=1)
        if len(fields) == 1:
            raise OmniglotFormatError(f"line {number} of {path} is not '<hex>  <filename>': {line!r}")
        if fields:
            sums[fields[1].lstrip("*")] = fields[0].lower()
    return sums


def expected_checksums(folder):
    """The checksums the zips in ``folder`` must have -> ({zip name: (algorithm, hex)}, source).

    A ``SHA256SUMS`` (or else ``MD5SUMS``) file in ``folder`` that lists both zips wins;
    otherwise the official md5s. Only the small checksum file is read, never the zips.
    """
    for file_name, algorithm in CHECKSUM_FILES:
        path = folder / file_name
        if path.is_file():
            sums = read_checksum_file(path)
            if all(name in sums for name in ZIP_NAMES):
                return {name: (algorithm, sums[name]) for name in ZIP_NAMES}, f"{file_name} in {folder}"
    return {name: ("md5", OFFICIAL_MD5[name]) for name in ZIP_NAMES}, "official md5"


def file_hash(path, algorithm):
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_zips(folder, expected, checksum_source):
    """Raise if a zip is missing or its checksum differs from ``expected``."""
    for name, (algorithm, want) in expected.items():
        path = folder / name
        if not path.is_file():
            raise OmniglotNotFoundError(
                f"missing Omniglot zip {path}; download {OMNIGLOT_URL}{name} into {folder}, "
                f"or point data_dir / --data-dir / {ENV_VAR} at a folder that holds both zips")
        got = file_hash(path, algorithm)
        if got != want:
            raise OmniglotChecksumError(
                f"checksum mismatch for {path}: expected {algorithm} {want} ({checksum_source}), "
                f"got {got}; the file is truncated, corrupt or a different version - "
                f"delete it and download it again")


@contextlib.contextmanager
def _atomic_write(path):
    """Open a temporary file beside ``path``; rename it to ``path`` only if the block succeeds.

    On any exception the temporary file is deleted, so ``path`` is either absent, the old
    file, or complete - never half-written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)                       # mkstemp creates files readable by the owner only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_file(url, path, md5, progress=True):
    """Download ``url`` to ``path`` with a tqdm bar, checking its md5 before the final rename."""
    log.info("downloading %s -> %s", url, path)
    digest = hashlib.md5()
    with _atomic_write(path) as out:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc=path.name,
                          disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise OmniglotDownloadError(
                f"could not download {url} ({err}). Download it by hand (e.g. in a browser) "
                f"into a folder together with the other Omniglot zip, then pass that folder as "
                f"data_dir / --data-dir or set {ENV_VAR}") from err
        if digest.hexdigest() != md5:
            raise OmniglotChecksumError(
                f"checksum mismatch for the download of {url}: expected md5 {md5}, "
                f"got {digest.hexdigest()}; nothing was saved")


def download_omniglot(folder, progress=True):
    """Download whichever of the two official zips is missing from ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ZIP_NAMES:
        if not (folder / name).is_file():
            download_file(OMNIGLOT_URL + name, folder / name, OFFICIAL_MD5[name], progress)


# ----------------------------------------------------------------------------------------
# 2. Decoding the zips
# ----------------------------------------------------------------------------------------

def _character_members(archive, zip_path):
    """Group an archive's PNGs by character -> {(alphabet, character): [20 member names]}.

    Names, alphabets and characters are sorted, so the result is deterministic.
    Directory entries and non-PNG files are ignored.
    """
    top = Path(zip_path).stem                      # "images_background"
    groups = {}
    for name in sorted(archive.namelist()):
        if not name.endswith(".png"):
            continue
        parts = PurePosixPath(name).parts
        if len(parts) != 4 or parts[0] != top:
            raise OmniglotFormatError(
                f"unexpected layout in {zip_path}: {name!r} is not "
                f"{top}/<Alphabet>/<character>/<drawing>.png")
        groups.setdefault((parts[1], parts[2]), []).append(name)
    if not groups:
        raise OmniglotFormatError(f"unexpected layout in {zip_path}: no PNG files under {top}/")
    for (alphabet, character), names in groups.items():
        if len(names) != DRAWINGS_PER_CHARACTER:
            raise OmniglotFormatError(
                f"unexpected layout in {zip_path}: {top}/{alphabet}/{character}/ holds "
                f"{len(names)} PNGs, expected {DRAWINGS_PER_CHARACTER}")
    return dict(sorted(groups.items()))


def decode_png(data, image_size):
    """PNG bytes -> uint8 (image_size, image_size), strokes 255 and background 0.

    The 1-bit image is converted to 8-bit grayscale, inverted (black strokes become 255),
    then resized with Pillow's LANCZOS filter, as in MAML's preprocessing.
    """
    image = Image.open(io.BytesIO(data))
    image = ImageOps.invert(image.convert("L"))
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _read_member(archive, zip_path, name, image_size):
    try:
        data = archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise OmniglotFormatError(f"corrupt zip {zip_path}: cannot read {name!r} ({err})") from err
    try:
        return decode_png(data, image_size)
    except (OSError, SyntaxError, ValueError) as err:
        raise OmniglotFormatError(f"{name!r} in {zip_path} is not a readable PNG ({err})") from err


def decode_zip(zip_path, image_size, progress=True):
    """Decode one Omniglot zip -> (images uint8 (C, 20, S, S), alphabets (C,), characters (C,))."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise OmniglotFormatError(
            f"corrupt or truncated zip {zip_path} ({err}); delete it and download it again") from err
    with archive:
        groups = _character_members(archive, zip_path)
        images = np.empty((len(groups), DRAWINGS_PER_CHARACTER, image_size, image_size), np.uint8)
        with tqdm(total=images.shape[0] * images.shape[1], unit="png",
                  desc=f"decoding {Path(zip_path).name}", disable=not progress) as bar:
            for c, names in enumerate(groups.values()):
                for d, name in enumerate(names):
                    images[c, d] = _read_member(archive, zip_path, name, image_size)
                bar.update(len(names))
    alphabets, characters = zip(*groups)
    return images, np.array(alphabets), np.array(characters)


def decode_omniglot(folder, image_size, progress=True):
    """Decode both zips in ``folder`` -> dict of the cache arrays (background rows first).

    images: uint8 (C, 20, S, S) with strokes 255; alphabets, characters, sets: str (C,)
    """
    parts = [decode_zip(folder / name, image_size, progress) for name in ZIP_NAMES]
    images, alphabets, characters = (np.concatenate(column) for column in zip(*parts))
    sets = np.repeat(SETS, [len(part[0]) for part in parts])
    return {"images": images, "alphabets": alphabets, "characters": characters, "sets": sets}


# ----------------------------------------------------------------------------------------
# 3. The cache
# ----------------------------------------------------------------------------------------

def cache_file_name(image_size, expected):
    """``omniglot_<S>px_lanczos_v<version>_<key>.npz``, key = hash of the zips' checksums.

    Changing the image size, the filter, ``PREPROCESS_VERSION`` or the expected checksums
    of the source zips gives a different file, so a stale cache is never read.
    """
    sums = ";".join(f"{name}:{algorithm}:{digest}"
                    for name, (algorithm, digest) in sorted(expected.items()))
    key = hashlib.sha256(sums.encode()).hexdigest()[:12]
    return f"omniglot_{image_size}px_{RESIZE_FILTER}_v{PREPROCESS_VERSION}_{key}.npz"


def read_cache(path, image_size):
    """The cached arrays, or None when the file is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:   # own file: always closed
            arrays = {field: npz[field] for field in CACHE_FIELDS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        log.warning("Omniglot cache %s is corrupt (%s: %s); rebuilding it",
                    path, type(err).__name__, err)
        return None
    images = arrays["images"]
    image_shape = (DRAWINGS_PER_CHARACTER, image_size, image_size)
    if (images.dtype != np.uint8 or images.shape[1:] != image_shape
            or any(len(arrays[field]) != len(images) for field in CACHE_FIELDS)):
        log.warning("Omniglot cache %s has unexpected contents; rebuilding it", path)
        return None
    return arrays


def write_cache(path, arrays):
    """Save ``arrays`` as one compressed .npz, atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def load_omniglot(data_dir=None, cache_dir=None, image_size=28, download=True, progress=True):
    """Load Omniglot as float32 images (1623, 20, image_size, image_size), strokes 1.0.

    data_dir:   folder with images_background.zip and images_evaluation.zip; default: see
                ``resolve_data_dir`` (env var NUMPY_AMAML_OMNIGLOT_DIR, the cache dir, the
                shared folder ``<repo>/../shared/data/omniglot``, download).
    cache_dir:  where the decoded .npz is kept (default ``<repo>/data``); also the download
                target when no other folder holds the zips.
    image_size: output side length; each 105x105 PNG is inverted, then LANCZOS-resized.
    download:   download the official zips into ``cache_dir`` when they are needed and missing.
    progress:   show tqdm bars for the download and the decoding.

    The zips are checked against a SHA256SUMS/MD5SUMS file beside them, else the official
    md5s, then decoded straight from the zip (no extraction). A cache hit reads only the
    checksum file and the .npz, never the zips. Errors subclass ``OmniglotError``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    folder, how = resolve_data_dir(data_dir, cache_dir)
    log.info("Omniglot source: %s (%s)", folder, how)
    if not folder.is_dir() and folder != cache_dir:
        raise OmniglotNotFoundError(
            f"Omniglot folder {folder} (from the {how}) does not exist; it should hold "
            f"{' and '.join(ZIP_NAMES)}")
    expected, checksum_source = expected_checksums(folder)
    cache_path = cache_dir / cache_file_name(image_size, expected)
    arrays = read_cache(cache_path, image_size)
    from_cache = arrays is not None
    if from_cache:
        log.info("Omniglot cache read: %s", cache_path)
    else:
        if download and folder == cache_dir and not _has_zips(folder):
            download_omniglot(folder, progress)
        verify_zips(folder, expected, checksum_source)
        log.info("Omniglot zips match the %s; decoding", checksum_source)
        arrays = decode_omniglot(folder, image_size, progress)
        write_cache(cache_path, arrays)
        log.info("Omniglot cache written: %s", cache_path)
    return OmniglotData(images=arrays["images"].astype(np.float32) / np.float32(255),
                        alphabets=arrays["alphabets"], characters=arrays["characters"],
                        sets=arrays["sets"], source=f"{folder} ({how})",
                        checksum_source=checksum_source, cache_path=cache_path,
                        from_cache=from_cache)


# ----------------------------------------------------------------------------------------
# 4. Splits and task sampling
# ----------------------------------------------------------------------------------------

def _count(size, num_characters, what):
    """A split size given as a count (int) or a fraction of all characters (float in [0, 1])."""
    if isinstance(size, float):
        if not 0.0 <= size <= 1.0:
            raise ValueError(f"{what} fraction must be in [0, 1], got {size}")
        return int(round(size * num_characters))
    return int(size)


def split_characters(num_characters, seed=0, n_train=1100, n_val=100):
    """Shuffle the characters with ``seed`` and cut them into meta-train/val/test index arrays.

    n_train, n_val: counts (int) or fractions of ``num_characters`` (float); meta-test gets
    the rest (423 for Omniglot's 1623 with the defaults). Returns {"train", "val", "test"}:
    sorted int64 arrays of character indices, pairwise disjoint, covering every character.
    """
    train = _count(n_train, num_characters, "n_train")
    val = _count(n_val, num_characters, "n_val")
    if train < 1 or val < 0 or train + val >= num_characters:
        raise ValueError(
            f"cannot split {num_characters} characters into {train} meta-train, {val} "
            f"meta-validation and at least 1 meta-test character; pass smaller n_train / n_val "
            f"(counts or fractions) for a small dataset")
    order = np.random.default_rng(seed).permutation(num_characters)
    return {"train": np.sort(order[:train]),
            "val": np.sort(order[train:train + val]),
            "test": np.sort(order[train + val:])}


def _check_sampler_arguments(images, characters, ways, shots, queries, num_rotations):
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (characters, drawings, H, H), got {images.shape}")
    if characters.ndim != 1 or not np.all((0 <= characters) & (characters < len(images))):
        raise ValueError(f"split_indices must be a 1-D array of indices into the "
                         f"{len(images)} characters")
    if min(ways, shots, queries) < 1:
        raise ValueError(f"ways, shots and queries must be >= 1, got {ways}, {shots}, {queries}")
    num_classes = len(characters) * num_rotations
    if ways > num_classes:
        raise ValueError(f"{ways}-way tasks need {ways} classes, but this split has only {num_classes} "
                         f"({len(characters)} characters x {num_rotations} rotations)")
    if shots + queries > images.shape[1]:
        raise ValueError(f"shots + queries = {shots + queries} exceeds the {images.shape[1]} "
                         f"drawings per character")


class TaskSampler:
    """Draws batches of N-way K-shot classification tasks from one split.

    A class is a (character, rotation) pair when ``rotations`` is True (rotations by
    0/90/180/270 degrees counter-clockwise), else a character. Per task: ``ways`` distinct
    classes in random order (label i = i-th drawn class), and for each class ``shots``
    support and ``queries`` query drawings, all distinct. Examples are grouped by label.

    images:        float (num_characters, drawings, H, H), e.g. ``OmniglotData.images``
    split_indices: character indices of one split, e.g. ``split_characters(...)["train"]``
    seed:          seed of the sampler's own numpy Generator

    The split's images are rotated once here and kept as ``class_images`` (num_classes,
    drawings, H, H), class ``num_rotations * i + k`` = split character i rotated by k * 90
    degrees; for Omniglot's 1100 meta-train characters that is 276 MB, built in about a
    second, and each batch is then one gather.
    """

    def __init__(self, images, split_indices, ways, shots, queries, seed=0, rotations=True):
        images = np.asarray(images, dtype=np.float32)
        self.characters = np.asarray(split_indices, dtype=np.int64)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_rotations = 4 if rotations else 1
        _check_sampler_arguments(images, self.characters, ways, shots, queries, self.num_rotations)
        split_images = images[self.characters]                                # (n, drawings, H, H)
        rotated = [np.rot90(split_images, k, axes=(-2, -1)) for k in range(self.num_rotations)]
        self.class_images = np.stack(rotated, axis=1).reshape(-1, *images.shape[1:])
        self.rng = np.random.default_rng(seed)

    @property
    def num_classes(self):
        return len(self.class_images)

    def sample(self, batch_size):
        """Draw ``batch_size`` tasks.

        Returns x_support float32 (B, ways*shots, H, H, 1), y_support int64 (B, ways*shots),
        x_query float32 (B, ways*queries, H, H, 1), y_query int64 (B, ways*queries);
        labels are 0..ways-1, each ``shots`` (``queries``) times, grouped by label.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # ways distinct classes per task; Generator.choice returns them in random order,
        # so which class gets label 0, 1, ... is a random permutation.
        classes = np.stack([self.rng.choice(self.num_classes, self.ways, replace=False)
                            for _ in range(batch_size)])                      # (B, ways)
        # The head of a random permutation of the drawings: support and query never share one.
        keys = self.rng.random((batch_size, self.ways, self.class_images.shape[1]))
        drawings = np.argsort(keys, axis=2)                                   # (B, ways, drawings)
        support = self.class_images[classes[..., None], drawings[:, :, :self.shots]]
        query_drawings = drawings[:, :, self.shots:self.shots + self.queries]
        query = self.class_images[classes[..., None], query_drawings]
        side = self.class_images.shape[-1]
        labels = np.arange(self.ways, dtype=np.int64)
        return (support.reshape(batch_size, -1, side, side, 1),
                np.tile(np.repeat(labels, self.shots), (batch_size, 1)),
                query.reshape(batch_size, -1, side, side, 1),
                np.tile(np.repeat(labels, self.queries), (batch_size, 1)))

    def get_state(self):
        """The generator state as a JSON-serialisable dict (for resuming training)."""
        return copy.deepcopy(self.rng.bit_generator.state)

    def set_state(self, state):
        """Restore a state returned by ``get_state``."""
        self.rng.bit_generator.state = copy.deepcopy(state)
