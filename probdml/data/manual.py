"""Where the builders get the official files: the TFDS manual directory, else TFDS's own download.

The manual directory is TFDS's: `<data_dir>/downloads/manual/` unless a `manual_dir` is given
(`tfds.download.DownloadConfig(manual_dir=...)`, or `data.manual_dir` in a probdml config). A file
(or the folder an archive extracts to) found there is used as is; a file not found there is
downloaded from its official URL by TFDS's `DownloadManager.download` into `<data_dir>/downloads/`
(kept there, so it is fetched once; not extracted: the builders stream the archives). When both
fail, `obtain` raises one ConfigError naming the files, the manual directory and the download error.
No checksums are registered for these URLs: a downloaded file is checked only for being an archive
(or .mat file) of the expected kind, so an HTML error page is reported as a failed download.

Offline, the same error comes within seconds: before TFDS's download (whose retries with backoff take
minutes), `unreachable(url)` tries a TCP connection to the URL's host (skipped when a proxy is
configured), and with `data.download=False` (`downloads_enabled(False)`) nothing is downloaded at all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import tensorflow_datasets as tfds
from etils import epath

from probdml.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One file of an official download.

    names: what the builder accepts in the manual directory, the downloaded file's name first (e.g.
    'CUB_200_2011.tgz'), then the folder it extracts to ('CUB_200_2011'). url: the official URL of
    the file. note: a sentence added to the error when neither the manual directory nor the download
    provides the file (e.g. that the URL is known to be dead).
    """

    names: tuple[str, ...]
    url: str
    note: str = ""

    def describe(self) -> str:
        return self.names[0] + "".join(f" (or the folder {n}/ it extracts to)" for n in self.names[1:])


def missing_files_error(dataset: str, where: str, expected: Sequence[str]) -> ConfigError:
    """ConfigError naming the files a builder looked for and the directory it looked in."""
    return ConfigError(
        f"{dataset}: none of {', '.join(expected)} found in the TFDS manual directory {where}; "
        f"put one of them there, or point data.manual_dir (DownloadConfig(manual_dir=...)) at the "
        f"folder that holds them"
    )


def manual_dir(dl_manager: tfds.download.DownloadManager) -> tuple[epath.Path | None, str]:
    """(the manual directory, or None when it is missing or empty; its path, for messages)."""
    try:
        root = dl_manager.manual_dir
    except AssertionError as err:  # TFDS: "Manual directory <path> does not exist or is empty. ..."
        return None, str(err).split(" does not exist")[0].removeprefix("Manual directory ")
    return root, os.fspath(root)


# File signatures of the official downloads: gzip (.tgz), zip, MATLAB 5 (.mat) headers.
_MAGIC = {".tgz": (b"\x1f\x8b", "a gzip archive"), ".zip": (b"PK\x03\x04", "a zip archive"),
          ".mat": (b"MATLAB", "a MATLAB .mat file")}


def _check_download(path: epath.Path, name: str) -> None:
    """Raise ValueError unless the file `path` starts with the signature of the kind of file `name`
    is (.tgz, .zip, .mat): catches an HTML page served in place of the file."""
    for suffix, (magic, kind) in _MAGIC.items():
        if name.endswith(suffix):
            with path.open("rb") as f:
                if f.read(len(magic)) != magic:
                    raise ValueError(f"the downloaded file {path} is not {kind}")


_DOWNLOADS = {"enabled": True}


class DownloadDisabledError(RuntimeError):
    """A file had to be downloaded while downloads are disabled (data.download=False)."""


@contextlib.contextmanager
def downloads_enabled(enabled: bool):
    """Within the block, `obtain` downloads missing files only if `enabled` (else it fails at once)."""
    previous = _DOWNLOADS["enabled"]
    _DOWNLOADS["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _DOWNLOADS["enabled"] = previous


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why the host of an http(s)/ftp `url` cannot be reached (name lookup or TCP connection, each within
    `timeout` seconds), or None: reachable, another scheme, or a proxy configured for the scheme."""
    parts = urllib.parse.urlsplit(url)
    ports = {"http": 80, "https": 443, "ftp": 21}
    if parts.scheme not in ports or not parts.hostname or parts.scheme in urllib.request.getproxies():
        return None
    port = parts.port or ports[parts.scheme]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        addresses = pool.submit(socket.getaddrinfo, parts.hostname, port, type=socket.SOCK_STREAM).result(timeout)
    except concurrent.futures.TimeoutError:
        return f"no answer for the name {parts.hostname} within {timeout:g} s"
    except OSError as err:
        return f"cannot resolve {parts.hostname} ({err})"
    finally:
        pool.shutdown(wait=False)
    last = None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
            return None
        except OSError as err:
            last = err
    return f"cannot connect to {parts.hostname}:{port} ({last})"


def _download(dl_manager: tfds.download.DownloadManager, url: str) -> epath.Path:
    """`dl_manager.download(url)`, failing at once when downloads are disabled or the host is unreachable
    (checked for TFDS's DownloadManager, which would otherwise retry for minutes)."""
    if not _DOWNLOADS["enabled"]:
        raise DownloadDisabledError("downloads are disabled by data.download=False")
    if isinstance(dl_manager, tfds.download.DownloadManager):
        reason = unreachable(url)
        if reason:
            raise ConnectionError(f"unreachable: {reason}")
    return epath.Path(dl_manager.download(url))


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def obtain(dl_manager: tfds.download.DownloadManager, dataset: str, artifacts: Sequence[Artifact]) -> list[epath.Path]:
    """The path of each artifact: the first of its `names` present in the manual directory, else the
    file downloaded from its `url` by `dl_manager.download`.

    Downloads run in order and stop at the first failure (an exception from the download, or a file
    that is not of the expected kind); then a ConfigError names the artifacts missing from the
    manual directory, the manual directory, the URL and the download error, and the notes.
    """
    root, where = manual_dir(dl_manager)
    found: dict[int, epath.Path] = {}
    for i, art in enumerate(artifacts):
        for name in art.names if root is not None else ():
            if (root / name).exists():
                found[i] = root / name
                break
    missing = [art for i, art in enumerate(artifacts) if i not in found]
    for i, art in enumerate(artifacts):
        if i in found:
            continue
        try:
            path = _download(dl_manager, art.url)
            _check_download(path, art.names[0])
        except Exception as err:  # network, HTTP status, checksum, wrong content: all reported alike
            notes = "".join(f"{note} " for note in dict.fromkeys(a.note for a in missing if a.note))
            them = "it" if len(missing) == 1 else "them"
            raise ConfigError(
                f"{dataset}: {' and '.join(a.describe() for a in missing)} not found in the TFDS manual "
                f"directory {where}, and the download from {art.url} failed ({_one_line(err)}). {notes}"
                f"Put {them} in {where}, or point data.manual_dir (DownloadConfig(manual_dir=...)) at the "
                f"folder that holds {them}."
            ) from err
        found[i] = path
    return [found[i] for i in range(len(artifacts))]


def iter_files(dl_manager: tfds.download.DownloadManager, source: epath.Path) -> Iterator[tuple[str, BinaryIO]]:
    """(path, file object) of every file in the folder or archive `source`.

    Paths are '/'-separated and start with the folder's name for a folder (`CUB_200_2011/images/...`),
    and are the member names for an archive, which for the official archives start with the same
    top-level folder. Folders are walked in sorted order; archives in their stored order.
    """
    if source.is_dir():
        files = [epath.Path(root) / name for root, _, names in source.walk() for name in names]
        for path in sorted(files):
            rel = path.relative_to(source.parent).as_posix()
            with path.open("rb") as f:
                yield rel, f
    else:
        yield from dl_manager.iter_archive(source)


def is_image_name(path: str, suffixes: tuple[str, ...] = (".jpg", ".jpeg")) -> bool:
    """True for image file names with one of `suffixes` (any case), excluding hidden files ('._x.jpg')."""
    base = path.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(suffixes)


def as_jpeg(data: bytes, quality: int = 95) -> bytes:
    """`data` itself when it is a baseline RGB or grayscale JPEG; otherwise the image converted to RGB
    and re-encoded as JPEG at `quality` (PNG, CMYK JPEG, palette images...), so every stored image
    can be decoded (and crop-decoded) by `tf.io.decode_jpeg(channels=3)`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            return data
        out = io.BytesIO()
        img.convert("RGB").save(out, format="JPEG", quality=quality)
        return out.getvalue()
