"""Outputs and run dirs at URIs (s3://, gs://, ...), through pyarrow's filesystems.

DATA is opened through sources.Location; this module serves what aepipe writes or loads by URI:
codes stores (--out), run dirs (train --out, --model). Object stores have no rename, so a store
at a URI is written in place and its completion marker (Zarr's "complete" attribute, Parquet's
manifest) goes last; readers refuse a store without it. file:// URIs are plain local paths.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from aepipe.errors import AepipeError


def is_uri(spec) -> bool:
    """A remote location: a scheme other than file://."""
    s = str(spec)
    return "://" in s and not s.startswith("file://")


def local_or_uri(spec: str) -> str:
    """What a command-line path means: file:///x is /x; other URIs and local paths as written."""
    from urllib.parse import unquote, urlparse

    s = str(spec)
    return unquote(urlparse(s).path) if s.startswith("file://") else s


class URI(str):
    """A URI that answers .name and .suffix like a Path, for code that only asks those of an output
    (pathlib would fold s3://b/k into s3:/b/k)."""

    @property
    def name(self) -> str:
        return PurePosixPath(self.split("://", 1)[1]).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def __truediv__(self, other) -> "URI":
        return URI(f"{self.rstrip('/')}/{other}")


def resolve(uri: str):
    """(pyarrow filesystem, path inside it), or one clear error (unknown scheme, no credentials)."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(str(uri))
    except Exception as e:
        raise AepipeError(f"{uri}: cannot reach it ({str(e).splitlines()[0][:200]})") from None


def _info(uri: str):
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except Exception as e:
        raise AepipeError(f"{uri}: cannot reach it ({str(e).splitlines()[0][:200]})") from None


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    return _info(uri).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    import pyarrow.fs as pafs

    return _info(uri).type == pafs.FileType.File


def check_writable(uri: str) -> None:
    """The bucket must exist: aepipe creates folders, never buckets (they carry billing and policy)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except Exception as e:
        raise AepipeError(f"{uri}: cannot reach it ({str(e).splitlines()[0][:200]})") from None
    if not found:
        raise AepipeError(f'{uri}: bucket "{bucket}" does not exist (create it first)')


def check_zarr_scheme(uri: str) -> None:
    """Zarr reaches a URI through fsspec, which needs the scheme's package (s3fs, gcsfs...)."""
    import fsspec

    scheme = str(uri).split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise AepipeError(f"{uri}: Zarr stores at {scheme}:// need fsspec's {scheme} support ({e}); "
                          "or write .parquet there") from None


def remove(uri: str) -> None:
    """Delete an object or everything under a prefix; nothing there is fine."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """One object, whole: an object store shows it only once the upload completes."""
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def download(uri: str, dest: Path, only: tuple[str, ...] = ()) -> None:
    """A run dir's files (all, or only the names given) into the local folder dest."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    if only:
        for name in only:
            if fs.get_file_info(f"{path}/{name}").type == pafs.FileType.File:
                pafs.copy_files(f"{path}/{name}", str(Path(dest) / name), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
        return
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def upload(src: Path, uri: str, last: str) -> None:
    """A local folder to uri, file by file, the file named `last` after all others: its presence
    there means the rest is complete (a run dir's aepipe.json)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    local = pafs.LocalFileSystem()
    files = sorted(p for p in Path(src).rglob("*") if p.is_file())
    for p in sorted(files, key=lambda p: p.name == last):
        rel = p.relative_to(src).as_posix()
        pafs.copy_files(str(p), f"{path}/{rel}", source_filesystem=local, destination_filesystem=fs)
