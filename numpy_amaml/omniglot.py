"""Omniglot: find or download the zips, decode them once into a cached array.

Omniglot (Lake et al. 2015, MIT license) has 1623 handwritten characters from 50 alphabets,
20 drawings each, as 105x105 1-bit PNGs (black strokes on white) in two zips:
``images_background.zip`` (964 characters) and ``images_evaluation.zip`` (659), laid out as
``images_background/<Alphabet>/character<NN>/<ID>_<DD>.png``.

Pipeline (MAML's protocol, Finn et al. 2017):

1. ``load_omniglot``  -> ``OmniglotData`` with ``images`` float32 (1623, 20, 28, 28),
   strokes = 1.0 and background = 0.0, plus per-character metadata. The first call decodes
   all 32,460 PNGs (a few seconds) and caches one compressed ``.npz``; later calls read only
   that file.
2. ``omniglot_sampler.split_characters`` -> shuffled character indices: 1100 meta-train,
   100 meta-validation, 423 meta-test.
3. ``omniglot_sampler.TaskSampler`` -> batches of N-way K-shot tasks in NHWC layout.

This module works on host NumPy arrays; training code moves batches to the device.
Log lines (which folder, which checksums, cache hit or write) go to the logger
``numpy_amaml.omniglot`` at INFO level.
"""
import errno
import hashlib
import http.client
import io
import logging
import os
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from numpy_amaml.files import atomic_write, remove_stale_temporaries

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


class OmniglotPermissionError(OmniglotError, PermissionError):
    """The data folder, a zip or a checksum file cannot be read, or the download folder written."""


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


def download_file(url, path, md5, progress=True):
    """Download ``url`` to ``path`` with a tqdm bar, checking its md5 before the final rename."""
    log.info("downloading %s -> %s", url, path)
    digest = hashlib.md5()
    with atomic_write(path) as out:
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
    """Save ``arrays`` as one compressed .npz, atomically; first delete what an interrupted
    earlier write (``kill -9``) may have left behind. A cache folder that cannot be written
    (no permission, a read-only file system) only costs the cache: a warning, and the next
    load decodes the zips again. Returns whether the cache was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        with atomic_write(path) as f:
            np.savez_compressed(f, **arrays)
    except OSError as err:
        if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
            raise
        log.warning("Omniglot cache not written: cannot write in %s (%s); every run will decode the zips "
                    "again (a few seconds)", path.parent, err.strerror or err)
        return False
    return True


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
    md5s (on every call: hashing both takes about 20 ms), then decoded straight from the zip
    (no extraction). The cache's name holds a hash of those checksums, so it belongs to the
    zips it came from; a cache hit reads the .npz and decodes nothing. Errors subclass
    ``OmniglotError``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    folder, how = resolve_data_dir(data_dir, cache_dir)
    log.info("Omniglot source: %s (%s)", folder, how)
    try:
        if not folder.is_dir() and folder != cache_dir:
            raise OmniglotNotFoundError(
                f"Omniglot folder {folder} (from the {how}) does not exist; it should hold "
                f"{' and '.join(ZIP_NAMES)}")
        expected, checksum_source = expected_checksums(folder)
        cache_path = cache_dir / cache_file_name(image_size, expected)
        zips_present = _has_zips(folder)
        if zips_present:        # always (about 20 ms): a replaced or damaged zip is noticed even with a cache
            verify_zips(folder, expected, checksum_source)
        arrays = read_cache(cache_path, image_size)
        from_cache = arrays is not None
        if from_cache:
            log.info("Omniglot cache read: %s", cache_path)
        else:
            if not zips_present:
                if download and folder == cache_dir:
                    try:
                        download_omniglot(folder, progress)
                    except PermissionError:
                        raise OmniglotPermissionError(f"cannot download into {folder}: permission denied; "
                                                      f"pass --data-dir or {ENV_VAR}") from None
                verify_zips(folder, expected, checksum_source)
            log.info("Omniglot zips match the %s; decoding", checksum_source)
            arrays = decode_omniglot(folder, image_size, progress)
    except OmniglotError:
        raise
    except PermissionError as err:      # an unreadable folder, zip or checksum file
        raise OmniglotPermissionError(f"cannot read {err.filename or folder}: permission denied; make it "
                                      f"readable (chmod) or point --data-dir / {ENV_VAR} at a readable copy "
                                      f"of the zips") from None
    if not from_cache and write_cache(cache_path, arrays):
        log.info("Omniglot cache written: %s", cache_path)
    return OmniglotData(images=arrays["images"].astype(np.float32) / np.float32(255),
                        alphabets=arrays["alphabets"], characters=arrays["characters"],
                        sets=arrays["sets"], source=f"{folder} ({how})",
                        checksum_source=checksum_source, cache_path=cache_path,
                        from_cache=from_cache)
