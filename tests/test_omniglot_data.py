"""Omniglot data path and task sampler (numpy_amaml.omniglot), without network access.

Most tests use a tiny Omniglot-layout zip pair built in a temporary folder: 2 alphabets x
3 characters x 20 drawings per zip, 105x105 1-bit PNGs with a black block (strokes) on
white. The integration test at the end loads the real data when
``<repo>/../shared/data/omniglot`` exists, caching it in the default ``<repo>/data``.
"""
import io
import json
import shutil
import time
import urllib.error
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from numpy_amaml import omniglot
from numpy_amaml.omniglot import (OmniglotChecksumError, OmniglotDownloadError, OmniglotFormatError,
                                  OmniglotNotFoundError, load_omniglot)
from numpy_amaml.omniglot_sampler import TaskSampler, split_characters

REAL_SHARED_DIR = omniglot.SHARED_DATA_DIR
TINY_ALPHABETS = {"background": ("Alpha_bg", "Beta_bg"), "evaluation": ("Delta_ev", "Gamma_ev")}
TINY_CHARACTERS_PER_ALPHABET = 3
TINY_NUM_CHARACTERS = 12


# ----------------------------------------------------------------------------------------
# Building a tiny Omniglot
# ----------------------------------------------------------------------------------------

def tiny_png(character, drawer):
    """A 105x105 1-bit PNG: a black block at x 10..60, y 10..95 (strokes) plus a mark
    that depends on the character and the drawer, on a white background."""
    image = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(image)
    draw.rectangle([10, 10, 60, 95], fill=0)
    draw.line([70, 5 + 3 * character, 100, 5 + 3 * character + drawer], fill=0, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path, entries):
    """Write {member name: bytes} as a zip; names ending in '/' become directory entries."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def tiny_entries(set_name):
    """Member names -> bytes in the official layout, directory entries first."""
    top = f"images_{set_name}"
    entries = {f"{top}/": b""}
    character_id = 0 if set_name == "background" else 100
    for alphabet in TINY_ALPHABETS[set_name]:
        entries[f"{top}/{alphabet}/"] = b""
        for number in range(1, TINY_CHARACTERS_PER_ALPHABET + 1):
            character_id += 1
            folder = f"{top}/{alphabet}/character{number:02d}/"
            entries[folder] = b""
            for drawer in range(1, 21):
                png = tiny_png(character_id % 20, drawer)
                entries[f"{folder}{character_id:04d}_{drawer:02d}.png"] = png
    return entries


def md5s(folder):
    return {name: omniglot.file_hash(folder / name, "md5") for name in omniglot.ZIP_NAMES}


def write_sums(folder, file_name="SHA256SUMS", algorithm="sha256"):
    lines = [f"{omniglot.file_hash(folder / name, algorithm)}  {name}\n" for name in omniglot.ZIP_NAMES]
    (folder / file_name).write_text("".join(lines))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """A read-only template folder: the two tiny zips and a SHA256SUMS."""
    folder = tmp_path_factory.mktemp("tiny_omniglot")
    for set_name in omniglot.SETS:
        write_zip(folder / f"images_{set_name}.zip", tiny_entries(set_name))
    write_sums(folder)
    return folder


@pytest.fixture
def data_dir(tiny_source, tmp_path):
    """A fresh copy of the tiny zips that a test may damage."""
    return shutil.copytree(tiny_source, tmp_path / "omniglot")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No env var, no shared folder, and a download URL that cannot reach the network."""
    monkeypatch.delenv(omniglot.ENV_VAR, raising=False)
    monkeypatch.setattr(omniglot, "SHARED_DATA_DIR", tmp_path / "no-shared-folder")
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", (tmp_path / "no-server").as_uri() + "/")


def load(data_dir, cache_dir, **kwargs):
    return load_omniglot(data_dir=data_dir, cache_dir=cache_dir, progress=False, **kwargs)


def assert_no_partial_files(cache_dir, allowed=()):
    """The cache folder holds nothing except the files named in ``allowed``."""
    names = sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []
    assert names == sorted(allowed)


def rewrite_member(zip_path, member, data):
    """Replace one member's bytes, keeping the others."""
    with zipfile.ZipFile(zip_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries[member] = data
    write_zip(zip_path, entries)


# ----------------------------------------------------------------------------------------
# Loading and caching
# ----------------------------------------------------------------------------------------

def test_load_shapes_metadata_and_inversion(data_dir, cache_dir):
    data = load(data_dir, cache_dir)
    assert data.images.shape == (TINY_NUM_CHARACTERS, 20, 28, 28)
    assert data.images.dtype == np.float32
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    # Inside the black block the strokes are exactly 1; the white corner is exactly 0.
    assert np.all(data.images[:, :, 14, 8] == 1.0)
    assert np.all(data.images[:, :, 27, 27] == 0.0)
    assert list(data.sets) == ["background"] * 6 + ["evaluation"] * 6
    assert list(data.alphabets[:6]) == ["Alpha_bg"] * 3 + ["Beta_bg"] * 3
    assert list(data.characters[:3]) == ["character01", "character02", "character03"]
    assert data.checksum_source == f"SHA256SUMS in {data_dir}"
    assert "data_dir argument" in data.source and not data.from_cache
    assert_no_partial_files(cache_dir, [data.cache_path.name])


def test_drawings_sorted_by_name(data_dir, cache_dir):
    """Drawer d's mark ends d pixels lower; its position proves the drawing order."""
    images = load(data_dir, cache_dir, image_size=105).images
    expected = np.asarray(Image.open(io.BytesIO(tiny_png(1, 7))).convert("L")) == 0
    assert np.array_equal(images[0, 6] > 0.5, expected)


def test_md5sums_file_is_accepted(data_dir, cache_dir):
    (data_dir / "SHA256SUMS").unlink()
    write_sums(data_dir, "MD5SUMS", "md5")
    assert load(data_dir, cache_dir).checksum_source == f"MD5SUMS in {data_dir}"


def test_official_md5_is_used_without_checksum_file(data_dir, cache_dir, monkeypatch):
    (data_dir / "SHA256SUMS").unlink()
    monkeypatch.setattr(omniglot, "OFFICIAL_MD5", md5s(data_dir))
    assert load(data_dir, cache_dir).checksum_source == "official md5"


def test_second_load_reads_only_the_cache(data_dir, cache_dir, monkeypatch):
    first = load(data_dir, cache_dir)
    for name in omniglot.ZIP_NAMES:
        (data_dir / name).unlink()
    monkeypatch.setattr(omniglot, "decode_omniglot", pytest.fail)
    second = load(data_dir, cache_dir)
    assert second.from_cache and second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.alphabets, first.alphabets)
    assert_no_partial_files(cache_dir, [first.cache_path.name])


def test_cache_name_depends_on_image_size_and_checksums(data_dir, cache_dir):
    small = load(data_dir, cache_dir, image_size=14)
    large = load(data_dir, cache_dir, image_size=28)
    assert small.images.shape[2:] == (14, 14) and large.images.shape[2:] == (28, 28)
    assert small.cache_path != large.cache_path
    assert "14px" in small.cache_path.name and "lanczos" in small.cache_path.name
    expected, _ = omniglot.expected_checksums(data_dir)
    changed = dict(expected, **{"images_evaluation.zip": ("sha256", "0" * 64)})
    assert omniglot.cache_file_name(28, changed) != large.cache_path.name


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_rebuilt(data_dir, cache_dir, damage):
    path = load(data_dir, cache_dir).cache_path
    good = path.read_bytes()
    path.write_bytes(b"not an npz file" if damage == "garbage" else good[:len(good) // 2])
    rebuilt = load(data_dir, cache_dir)
    assert not rebuilt.from_cache and path.read_bytes() == good
    assert load(data_dir, cache_dir).from_cache


def test_failed_cache_write_leaves_nothing(data_dir, cache_dir, monkeypatch):
    def fail_halfway(file, **arrays):
        file.write(b"PK half an npz")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez_compressed", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


def test_data_dir_resolution(data_dir, cache_dir, monkeypatch):
    monkeypatch.setattr(omniglot, "SHARED_DATA_DIR", data_dir)
    assert "shared data folder" in load_omniglot(cache_dir=cache_dir, progress=False).source
    monkeypatch.setenv(omniglot.ENV_VAR, str(data_dir))
    assert omniglot.ENV_VAR in load_omniglot(cache_dir=cache_dir, progress=False).source
    monkeypatch.delenv(omniglot.ENV_VAR)
    for name in omniglot.ZIP_NAMES:
        shutil.copy(data_dir / name, cache_dir / name)
    assert omniglot.resolve_data_dir(None, cache_dir) == (cache_dir, "cache folder")


# ----------------------------------------------------------------------------------------
# Download (file:// URLs and a monkeypatched urlopen; never the real network)
# ----------------------------------------------------------------------------------------

def serve_tiny_zips(monkeypatch, tiny_source):
    """Point the download URL at the template folder and make its md5s the official ones."""
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", tiny_source.as_uri() + "/")
    monkeypatch.setattr(omniglot, "OFFICIAL_MD5", md5s(tiny_source))


def test_download_into_cache_dir(tiny_source, cache_dir, monkeypatch):
    serve_tiny_zips(monkeypatch, tiny_source)
    data = load_omniglot(cache_dir=cache_dir, progress=False)
    assert data.images.shape == (TINY_NUM_CHARACTERS, 20, 28, 28)
    assert data.checksum_source == "official md5" and "cache folder" in data.source
    assert_no_partial_files(cache_dir, [*omniglot.ZIP_NAMES, data.cache_path.name])


def test_failed_download_is_clear_and_leaves_nothing(cache_dir, monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", "https://example.invalid/omniglot/")
    monkeypatch.setattr(omniglot.urllib.request, "urlopen", no_network)
    with pytest.raises(OmniglotDownloadError) as error:
        load_omniglot(cache_dir=cache_dir, progress=False)
    message = str(error.value)
    assert "https://example.invalid/omniglot/images_background.zip" in message
    assert "--data-dir" in message and omniglot.ENV_VAR in message
    assert_no_partial_files(cache_dir)


def test_download_with_wrong_md5_leaves_nothing(tiny_source, cache_dir, monkeypatch):
    serve_tiny_zips(monkeypatch, tiny_source)
    monkeypatch.setitem(omniglot.OFFICIAL_MD5, "images_background.zip", "0" * 32)
    with pytest.raises(OmniglotChecksumError, match="expected md5 0{32}"):
        load_omniglot(cache_dir=cache_dir, progress=False)
    assert_no_partial_files(cache_dir)


def test_no_download_when_disabled(cache_dir):
    with pytest.raises(OmniglotNotFoundError, match="missing Omniglot zip"):
        load_omniglot(cache_dir=cache_dir, download=False, progress=False)
    assert_no_partial_files(cache_dir)


# ----------------------------------------------------------------------------------------
# Every error is clear and leaves no partial file
# ----------------------------------------------------------------------------------------

def test_missing_folder(tmp_path, cache_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(OmniglotNotFoundError, match="does not exist") as error:
        load(missing, cache_dir)
    assert str(missing) in str(error.value) and isinstance(error.value, FileNotFoundError)
    assert_no_partial_files(cache_dir)


def test_missing_zip(data_dir, cache_dir):
    (data_dir / "images_evaluation.zip").unlink()
    with pytest.raises(OmniglotNotFoundError, match="images_evaluation.zip"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


def test_checksum_mismatch(data_dir, cache_dir):
    zip_path = data_dir / "images_background.zip"
    expected = omniglot.file_hash(zip_path, "sha256")
    with open(zip_path, "ab") as f:
        f.write(b"extra")
    with pytest.raises(OmniglotChecksumError) as error:
        load(data_dir, cache_dir)
    message = str(error.value)
    assert str(zip_path) in message and expected in message
    assert omniglot.file_hash(zip_path, "sha256") in message and isinstance(error.value, ValueError)
    assert_no_partial_files(cache_dir)


def test_truncated_zip(data_dir, cache_dir):
    zip_path = data_dir / "images_evaluation.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:5000])
    write_sums(data_dir)  # the checksums match, so the zip reader itself must catch it
    with pytest.raises(OmniglotFormatError, match="corrupt or truncated zip .*images_evaluation.zip"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


def test_corrupt_zip_member(data_dir, cache_dir):
    zip_path = data_dir / "images_background.zip"
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo("images_background/Beta_bg/character02/0005_03.png")
    raw = bytearray(zip_path.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + info.compress_size // 2] ^= 0xFF
    zip_path.write_bytes(bytes(raw))
    write_sums(data_dir)
    with pytest.raises(OmniglotFormatError, match="corrupt zip .*0005_03.png"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


def test_png_that_does_not_decode(data_dir, cache_dir):
    member = "images_evaluation/Gamma_ev/character01/0104_07.png"
    rewrite_member(data_dir / "images_evaluation.zip", member, b"\x89PNG but not really")
    write_sums(data_dir)
    with pytest.raises(OmniglotFormatError, match=f"'{member}' .* not a readable PNG"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


@pytest.mark.parametrize("member, problem", [
    ("images_background/Alpha_bg/character01/0001_20.png", "holds 19 PNGs, expected 20"),
    ("images_background/Alpha_bg/stray.png", "is not images_background/<Alphabet>"),
])
def test_unexpected_layout(data_dir, cache_dir, member, problem):
    zip_path = data_dir / "images_background.zip"
    with zipfile.ZipFile(zip_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if member in entries:
        del entries[member]
    else:
        entries[member] = tiny_png(0, 0)
    write_zip(zip_path, entries)
    write_sums(data_dir)
    with pytest.raises(OmniglotFormatError, match=f"unexpected layout .*{problem}"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


def test_malformed_checksum_file(data_dir, cache_dir):
    (data_dir / "SHA256SUMS").write_text("justonetoken\n")
    with pytest.raises(OmniglotFormatError, match="line 1 of .*SHA256SUMS"):
        load(data_dir, cache_dir)
    assert_no_partial_files(cache_dir)


# ----------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------

def test_omniglot_split_sizes_and_disjointness():
    split = split_characters(1623, seed=0)
    assert [len(split[name]) for name in ("train", "val", "test")] == [1100, 100, 423]
    joined = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(joined), np.arange(1623))
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not np.intersect1d(split[a], split[b]).size


def test_split_is_seeded():
    a, b, c = (split_characters(1623, seed=seed) for seed in (0, 0, 1))
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert not np.array_equal(a["train"], c["train"])


def test_split_fractions_and_too_few_characters():
    split = split_characters(12, n_train=0.5, n_val=0.25)
    assert [len(split[name]) for name in ("train", "val", "test")] == [6, 3, 3]
    assert len(split_characters(12, n_train=10, n_val=0)["val"]) == 0
    with pytest.raises(ValueError, match="cannot split 12 characters"):
        split_characters(12)
    with pytest.raises(ValueError, match="cannot split"):
        split_characters(12, n_train=11, n_val=1)


# ----------------------------------------------------------------------------------------
# Task sampler, on synthetic images that encode (character, drawing, rotation)
# ----------------------------------------------------------------------------------------

SIDE = 8


def coded_images(num_characters=30, drawings=20):
    """images[c, d] = c * drawings + d + 1 everywhere, except -1 in the top-left corner;
    after sampling, pixel (1, 1) gives the (character, drawing) and the corner holding
    -1 gives the rotation."""
    codes = np.arange(num_characters * drawings, dtype=np.float32).reshape(num_characters, drawings) + 1
    images = np.broadcast_to(codes[:, :, None, None], (num_characters, drawings, SIDE, SIDE)).copy()
    images[:, :, 0, 0] = -1
    return images


def decode(x, drawings=20):
    """x (..., SIDE, SIDE, 1) -> (character, drawing, rotation) arrays of shape x.shape[:-3]."""
    code = x[..., 1, 1, 0].astype(np.int64) - 1
    corners = np.stack([x[..., 0, 0, 0], x[..., -1, 0, 0], x[..., -1, -1, 0], x[..., 0, -1, 0]], -1)
    return code // drawings, code % drawings, np.argmax(corners == -1, axis=-1)


def test_sampler_shapes_and_labels():
    images = coded_images()
    x_s, y_s, x_q, y_q = TaskSampler(images, np.arange(10), ways=5, shots=2, queries=3, seed=0).sample(7)
    assert x_s.shape == (7, 10, SIDE, SIDE, 1) and x_q.shape == (7, 15, SIDE, SIDE, 1)
    assert x_s.dtype == x_q.dtype == np.float32 and y_s.dtype == y_q.dtype == np.int64
    assert y_s.shape == (7, 10) and y_q.shape == (7, 15)
    for y, per_class in [(y_s, 2), (y_q, 3)]:
        assert y.min() == 0 and y.max() == 4
        assert all(np.array_equal(np.bincount(row, minlength=5), np.full(5, per_class)) for row in y)


@pytest.mark.parametrize("rotations", [True, False])
def test_sampler_task_structure(rotations):
    images = coded_images()
    split = np.array([2, 3, 5, 7, 11, 13, 17, 19])
    sampler = TaskSampler(images, split, ways=6, shots=3, queries=4, seed=1, rotations=rotations)
    x_s, y_s, x_q, y_q = sampler.sample(200)
    char_s, draw_s, rot_s = decode(x_s)
    char_q, draw_q, rot_q = decode(x_q)
    assert np.isin(char_s, split).all() and np.isin(char_q, split).all()
    seen_rotations, sorted_tasks = set(), 0
    for t in range(len(y_s)):
        classes = []
        for label in range(6):
            s, q = y_s[t] == label, y_q[t] == label
            pairs = set(zip(char_s[t, s], rot_s[t, s])) | set(zip(char_q[t, q], rot_q[t, q]))
            assert len(pairs) == 1                              # one class per label
            classes.append(pairs.pop())
            drawings = np.concatenate([draw_s[t, s], draw_q[t, q]])
            assert len(np.unique(drawings)) == 7                # support/query disjoint
        assert len(set(classes)) == 6                           # distinct classes per task
        seen_rotations |= {rotation for _, rotation in classes}
        sorted_tasks += classes == sorted(classes)
    assert seen_rotations == ({0, 1, 2, 3} if rotations else {0})
    assert sorted_tasks < 10                    # labels permuted: class order rarely sorted


def test_sampler_rotates_counterclockwise_with_rot90():
    images = np.random.default_rng(0).random((4, 20, SIDE, SIDE)).astype(np.float32)
    x_s = TaskSampler(images, np.arange(4), ways=16, shots=1, queries=1, seed=0).sample(1)[0]
    candidates = {(c, d, k): np.rot90(images[c, d], k)
                  for c in range(4) for d in range(20) for k in range(4)}
    found = [[key for key, image in candidates.items() if np.array_equal(x, image)]
             for x in x_s[0, ..., 0]]
    assert all(len(keys) == 1 for keys in found)
    # The one 16-way task holds every class: 4 characters x 4 rotations.
    assert {(c, k) for [(c, _, k)] in found} == {(c, k) for c in range(4) for k in range(4)}


def test_sampler_seeding_and_state_round_trip():
    images = coded_images()
    a = TaskSampler(images, np.arange(30), 5, 1, 1, seed=3)
    b = TaskSampler(images, np.arange(30), 5, 1, 1, seed=3)
    c = TaskSampler(images, np.arange(30), 5, 1, 1, seed=4)
    first = a.sample(4)
    assert all(np.array_equal(u, v) for u, v in zip(first, b.sample(4)))
    assert not np.array_equal(first[0], c.sample(4)[0])
    state = json.loads(json.dumps(a.get_state()))
    expected = a.sample(4)
    a.sample(4)
    a.set_state(state)
    assert all(np.array_equal(u, v) for u, v in zip(expected, a.sample(4)))


def test_sampler_errors():
    images = coded_images(num_characters=3)
    with pytest.raises(ValueError, match="13-way tasks need 13 classes, but this split has only 12"):
        TaskSampler(images, np.arange(3), ways=13, shots=1, queries=1)
    with pytest.raises(ValueError, match="only 3"):
        TaskSampler(images, np.arange(3), ways=4, shots=1, queries=1, rotations=False)
    with pytest.raises(ValueError, match="shots \\+ queries = 21 exceeds the 20 drawings"):
        TaskSampler(images, np.arange(3), ways=2, shots=5, queries=16)
    with pytest.raises(ValueError, match=">= 1"):
        TaskSampler(images, np.arange(3), ways=0, shots=1, queries=1)
    with pytest.raises(ValueError, match="indices into the 3 characters"):
        TaskSampler(images, np.array([0, 3]), ways=2, shots=1, queries=1)


def test_sampler_is_fast():
    images = np.zeros((1623, 20, 28, 28), np.float32)
    sampler = TaskSampler(images, split_characters(1623)["train"], ways=5, shots=1, queries=1, seed=0)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        sampler.sample(32)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.010


# ----------------------------------------------------------------------------------------
# The real data (when the shared folder exists)
# ----------------------------------------------------------------------------------------

@pytest.mark.skipif(not REAL_SHARED_DIR.is_dir(), reason=f"no Omniglot folder at {REAL_SHARED_DIR}")
def test_real_omniglot(monkeypatch):
    monkeypatch.setattr(omniglot, "SHARED_DATA_DIR", REAL_SHARED_DIR)
    start = time.perf_counter()
    data = load_omniglot(progress=False)      # default search and the default <repo>/data cache
    seconds = time.perf_counter() - start
    print(f"\nreal Omniglot: {seconds:.1f} s ({'cache' if data.from_cache else 'decoded'}), "
          f"{data.cache_path} ({data.cache_path.stat().st_size / 2**20:.1f} MiB)")
    if not omniglot._has_zips(omniglot.DEFAULT_CACHE_DIR):
        assert data.source.startswith(str(REAL_SHARED_DIR))
        assert data.checksum_source == f"SHA256SUMS in {REAL_SHARED_DIR}"
    assert data.images.shape == (1623, 20, 28, 28)
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert 0.03 < data.images.mean() < 0.2                    # thin strokes on empty background
    assert len(np.unique(data.alphabets)) == 50
    assert np.array_equal(np.unique(data.sets, return_counts=True)[1], [964, 659])
    split = split_characters(data.num_characters, seed=0)
    for ways, shots in [(5, 1), (20, 5)]:
        sampler = TaskSampler(data.images, split["test"], ways, shots, queries=shots, seed=0)
        x_s, y_s, x_q, y_q = sampler.sample(4)
        assert x_s.shape == (4, ways * shots, 28, 28, 1) and x_q.shape == (4, ways * shots, 28, 28, 1)
        assert y_s.max() == ways - 1 and 0.0 < x_s.mean() < 0.3
