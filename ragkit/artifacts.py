"""Index folders on disk: params JSON + arrays, written atomically, verified when loaded.

An index folder holds ``params.json`` (stage key, constructor args, ragkit version, content
hash of the input, the corpus it was built from, and a size + checksum of every other file in
the folder) and arrays. See ``docs/safety.md`` for the whole contract; in short:

- **Writing.** The index is written into a temporary sibling folder ``.NAME.tmp-PID-START-RAND``
  and swapped into place: on Linux with one ``renameat2(RENAME_EXCHANGE)`` (no moment without an
  index at ``path``), elsewhere with two renames (``path`` -> ``.NAME.old-PID-START-RAND``, temp
  -> ``path``). A crash never leaves a half-written index; an existing index survives a failed
  rebuild.
- **What may be replaced.** Only a folder that ragkit can prove it wrote: empty, or holding a
  ``params.json`` of the same stage and no file that params.json does not list. Never ``""`` or
  ``.``, never the folder holding the pipeline file or the corpus or any folder above them, never
  a file (:func:`check_target`). Anything else is a :class:`~ragkit.errors.ConfigError`.
- **Recovery.** Before writing and before loading, what a dead writer left beside ``path`` is
  cleaned: a ``.old-*`` folder of a dead process is moved back to ``path`` when ``path`` is
  missing (a build killed between its two renames is rolled back), else removed, and dead
  writers' ``.tmp-*`` folders are removed. "Dead" means no live process with that PID and start
  time (writers on other machines sharing the folder are not supported).
- **Verification.** Loading checks params.json (its own checksum included) and every listed
  file: ``fast`` (default) compares sizes and hashes of the first and last 64 KiB of each file,
  ``full`` hashes every byte (``RAGKIT_VERIFY=full``, or ``verify="full"``), ``off`` skips both.
  Every failure is an :class:`~ragkit.errors.IndexArtifactError` naming the file and saying to
  rebuild.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from .errors import ConfigError, IndexArtifactError

PARAMS_FILE = "params.json"
MANIFEST_FILE = "manifest.json"
SHARDS_FILE = "shards.json"   # a sharded index's manifest, written after params.json (see below)
VERIFY_MODES = ("fast", "full", "off")
EDGE = 1 << 16  # bytes hashed at each end of a file in fast mode
_CHUNK = 1 << 22

log = logging.getLogger("ragkit.artifacts")

# Set by Pipeline.build_index for the duration of a build: folders an index may never replace
# (``protect``) and the corpus the indexes are built from (``corpus``: id, documents, manifest).
_BUILD: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ragkit_build", default=None)

# Test hook for crash trials: called with "before-swap", "between-renames" (two-rename fallback)
# and "after-swap" while an index folder is replaced. Never set in normal use.
_crash_point: Any = None
# Whether to try renameat2(RENAME_EXCHANGE) before the two-rename fallback.
USE_EXCHANGE = True


def cache_dir() -> Path:
    """The one folder ragkit writes caches into (``$RAGKIT_CACHE``, else ``~/.cache/ragkit``)."""
    return Path(os.environ.get("RAGKIT_CACHE") or Path.home() / ".cache" / "ragkit")


def resolve_path(path: str | Path, base_dir: str | Path | None) -> Path:
    """A relative path in a pipeline file is relative to that file's folder."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def content_hash(items: Any) -> str:
    """sha256 over an iterable of strings (or of tuples of strings)."""
    h = hashlib.sha256()
    for it in items:
        if isinstance(it, (tuple, list)):
            for x in it:
                h.update(str(x).encode("utf-8"))
                h.update(b"\x1f")
        else:
            h.update(str(it).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


def temp_file(folder: Path, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new, exclusively created file in ``folder`` for a write that is renamed onto its final name.
    Like ``tempfile.mkstemp``, but created with mode 0666 so the umask decides, as for an ordinary
    ``open(..., "w")`` (mkstemp's files are private, 0600): an index, an adapter or a KV store written
    by ragkit is readable like any other file the user writes. Returns (fd, path)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {folder}")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- build context ---------------------------------------------------------------------------------
@contextlib.contextmanager
def build_context(*, protect: Iterable[str | Path | tuple[Path, str]] = (), corpus: Mapping[str, Any] | None = None) -> Iterator[None]:
    """While active, index writers refuse to replace ``protect`` (paths, or (path, label) pairs; nor
    a folder above one of them)
    and record ``corpus`` (``{"id", "documents", "manifest"}``) in each index they write."""
    items = [p if isinstance(p, tuple) else (Path(p), "a folder the pipeline reads") for p in protect]
    token = _BUILD.set({"protect": items, "corpus": dict(corpus) if corpus else None})
    try:
        yield
    finally:
        _BUILD.reset(token)


def corpus_record(manifest: Any = None, documents: Iterable[Any] | None = None) -> dict[str, Any]:
    """The corpus identity stored in an index's params: a hash of the corpus manifest's content
    (reader kind, options, each entry's sha256; not paths' mtimes), else of the documents given."""
    if manifest is not None:
        m = manifest.to_dict() if hasattr(manifest, "to_dict") else dict(manifest)
        entries = m.get("entries", {})
        ident = content_hash([m.get("kind", ""), json.dumps(m.get("options", {}), sort_keys=True)]
                             + [(k, e.get("sha256", "")) for k, e in sorted(entries.items())])
        ndocs = len(entries) if m.get("kind") == "records" else sum(len(e.get("doc_ids", [])) for e in entries.values())
        return {"id": ident[:32], "documents": ndocs, "manifest": m}
    docs = list(documents or [])
    ident = content_hash((getattr(d, "doc_id", ""), getattr(d, "text", "")) for d in docs)
    return {"id": ident[:32], "documents": len(docs), "manifest": None}


# -- which folders may be replaced -----------------------------------------------------------------
def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(p)))))


def _is_same_or_above(folder: Path, other: Path) -> bool:
    return other == folder or folder in other.parents


def _litter_re(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)(?:-(\d+)-[A-Za-z0-9]+)?$")


def _ragkit_temp(entry: str) -> bool:
    """Temporary files ragkit's own atomic_write_text leaves (``.manifest.json.XXXX``)."""
    return bool(re.match(rf"^\.({re.escape(MANIFEST_FILE)}|{re.escape(PARAMS_FILE)})\.\w+$", entry))


def check_path_param(key: str, value: str, name: str = "path") -> None:
    """Config-time check of an indexer's ``path``: not empty, not the current folder, no NUL byte."""
    if not isinstance(value, str):
        return
    norm = os.path.normpath(value.strip()) if value.strip() else ""
    if norm in ("", "."):
        raise ConfigError(f"'{key}': parameter '{name}' is {value!r}, the folder itself; an index needs a folder of "
                          f"its own, because it is replaced as a whole on every build. Use e.g. 'indexes/"
                          f"{key.split('.')[-1]}' (relative to the pipeline file).")
    if "\x00" in value:
        raise ConfigError(f"'{key}': parameter '{name}' {value!r} contains a NUL byte.")


def check_target(path: str | Path, stage: str | None = None, *, protect: Iterable[str | Path] = (),
                 what: str = "index folder") -> Path:
    """The real path an index may be written to, or a ConfigError saying why not and what to do.

    Allowed: a path that does not exist yet, an empty folder, or a folder holding a ragkit index
    of the same ``stage`` (its params.json) and nothing else. Never ``""``/``"."``, a file, the
    current folder, the home folder, a ``protect`` folder (pipeline folder, corpus) or a folder
    above one of them.
    """
    raw = str(path)
    fix = "Set `path` to a new or empty folder of its own, e.g. 'indexes/bm25' beside the pipeline file."
    if raw.strip() in ("", ".", "./"):
        raise ConfigError(f"{what} path {raw!r} names the current folder; an index needs a folder of its own "
                          f"(its contents are replaced on every build). {fix}")
    if "\x00" in raw:
        raise ConfigError(f"{what} path {raw!r} contains a NUL byte. {fix}")
    real = _real(path)
    guards = [(_real(p), "a folder ragkit was told to protect") for p in protect]
    ctx = _BUILD.get()
    if ctx:
        guards += [(_real(p), label) for p, label in ctx["protect"]]
    guards += [(_real(os.getcwd()), "the current working folder"), (_real(Path.home()), "your home folder")]
    for g, label in guards:
        if _is_same_or_above(real, g):
            rel = "is" if real == g else "is above"
            raise ConfigError(f"{real}: refusing to use this as an {what}: it {rel} {label} ({g}), and an index "
                              f"folder is replaced as a whole on every build. {fix}")
    if not os.path.lexists(real):
        return real
    if not real.is_dir():
        raise ConfigError(f"{real}: is a file, not an {what}; ragkit will not move or replace it. "
                          f"Give a folder path. {fix}")
    entries = sorted(os.listdir(real))
    if not entries:
        return real
    params_f = real / PARAMS_FILE
    if PARAMS_FILE not in entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise ConfigError(f"{real}: refusing to replace this folder: it is not a ragkit index ({PARAMS_FILE} "
                          f"missing) and holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown}); "
                          f"ragkit only replaces folders it wrote. {fix}")
    try:
        data = json.loads(params_f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{params_f}: unreadable ({exc}), so ragkit cannot prove the folder is its index and "
                          f"will not replace it. Delete the folder yourself if it is an old index, or {fix[0].lower() + fix[1:]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
        raise ConfigError(f"{params_f}: not a ragkit index's parameters, so ragkit will not replace {real}. "
                          f"Delete the folder yourself if it is an old index, or {fix[0].lower() + fix[1:]}")
    if stage is not None and data["stage"] != stage:
        raise ConfigError(f"{real}: holds an index built by '{data['stage']}', not '{stage}'; ragkit will not "
                          f"replace one kind of index with another. Give this indexer its own folder.")
    listed = data.get("files")
    known = {str(n).split("/")[0] for n in listed} if isinstance(listed, dict) else None
    foreign = [e for e in entries if e not in (PARAMS_FILE, MANIFEST_FILE, SHARDS_FILE) and not _ragkit_temp(e)
               and (known is None and not _legacy_artifact(e) or known is not None and e not in known)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"{real}: the index folder also holds {shown}, which ragkit did not write; a rebuild "
                          f"would delete {'it' if len(foreign) == 1 else 'them'}. Move {'it' if len(foreign) == 1 else 'them'} "
                          f"out of the folder, or give the index another path.")
    return real


_LEGACY = re.compile(r"^(data|indices|indptr|order|nonoccurrence|text_offsets|ids|deleted)\.npy$|^(vocab|docstore)\.json$"
                     r"|^texts\.bin$|^index\.faiss$|^head_\d+\.faiss$")


def _legacy_artifact(name: str) -> bool:
    """File names written by index writers before params.json listed its files."""
    return bool(_LEGACY.match(name))


# -- dead writers and the rename window -------------------------------------------------------------
def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux), else 0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid)}-{secrets.token_hex(4)}"


def _alive(pid: int, start: int | None) -> bool:
    if pid <= 0:
        return True  # unknown: keep
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True
    if start:  # same PID, but another process (PID reused after the writer died)?
        now = _start_time(pid)
        if now and now != start:
            return False
    return True


def recover(path: str | Path) -> list[str]:
    """Clean what dead writers left beside ``path``; returns what was done (one line each).

    A dead writer's ``.NAME.old-*`` folder is moved back to ``path`` when ``path`` is missing (a
    build killed between its two renames: roll back), else removed; its ``.NAME.tmp-*`` folders
    are removed. Folders of live writers are left alone. ``.NAME.tmp-XXXXXXXX`` folders of ragkit
    versions that did not record their PID are removed when they hold only index files and nothing
    in them changed for an hour; other ones are left, with a warning.
    """
    path = Path(path)
    parent, name = path.parent, path.name
    done: list[str] = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return done
    pat = _litter_re(name)
    legacy = re.compile(rf"^\.{re.escape(name)}\.tmp-[a-z0-9_]{{8}}$")  # tempfile.mkdtemp, ragkit <= 0d00199
    olds, tmps = [], []
    for e in entries:
        m = pat.match(e)
        f = parent / e
        if not m:
            if legacy.match(e) and f.is_dir() and not f.is_symlink():
                if _legacy_tmp_removable(f):
                    shutil.rmtree(f, ignore_errors=True)
                    if not f.exists():
                        done.append(f"removed {e} (left by an older ragkit build)")
                else:
                    log.warning("%s: temporary folder of an older ragkit build (no process id recorded); remove "
                                "it by hand if no build is running", f)
            continue
        if not f.is_dir() or f.is_symlink():
            continue
        pid, start = int(m.group(2)), int(m.group(3)) if m.group(3) else None
        if _alive(pid, start):
            continue
        (olds if m.group(1) == "old" else tmps).append(f)
    if olds and not os.path.lexists(path):
        olds.sort(key=lambda f: f.stat().st_mtime_ns)
        keep = olds.pop()  # the newest previous index
        try:
            os.rename(keep, path)
            done.append(f"restored {path} from {keep.name} (a build was killed while replacing it)")
            log.warning("%s: restored the previous index from %s (a build was killed while replacing it)",
                        path, keep.name)
        except OSError as exc:
            raise IndexArtifactError(f"{path}: missing; the previous index is in {keep} (a build was killed while "
                                     f"replacing it) and could not be moved back ({exc}). Move it back by hand "
                                     f"(`mv {keep} {path}`) or rebuild the index.") from None
    for f in olds + tmps:
        shutil.rmtree(f, ignore_errors=True)
        if not f.exists():
            done.append(f"removed {f.name} (left by a dead build)")
    if done:
        log.info("%s: %s", path, "; ".join(done))
    return done


LEGACY_TMP_AGE_S = 3600


def _legacy_tmp_removable(f: Path) -> bool:
    """Whether a ``.NAME.tmp-XXXXXXXX`` folder of an older ragkit (no PID in its name) may go: it
    holds only index files (no subfolder, no other name) and nothing in it changed for an hour."""
    try:
        entries = list(f.iterdir())
        newest = max([f.stat().st_mtime] + [e.stat().st_mtime for e in entries])
        ours = all(e.is_file() and not e.is_symlink()
                   and (_legacy_artifact(e.name) or e.name in (PARAMS_FILE, MANIFEST_FILE)) for e in entries)
    except OSError:
        return False
    return ours and time.time() - newest > LEGACY_TMP_AGE_S


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    if not USE_EXCHANGE:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


@contextlib.contextmanager
def atomic_folder(path: str | Path, stage: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` atomically.

    ``path`` must pass :func:`check_target` (``stage``: the index kind that may be replaced; by
    default the one the new folder's params.json names). Dead writers' leftovers beside it are
    cleaned first (:func:`recover`).
    """
    real = check_target(path, stage)
    real.parent.mkdir(parents=True, exist_ok=True)
    recover(real)
    tmp = real.parent / f".{real.name}.tmp-{_owner_tag()}"
    tmp.mkdir()
    try:
        yield tmp
        if stage is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stage = json.loads((tmp / PARAMS_FILE).read_text(encoding="utf-8")).get("stage")
        check_target(path, stage)  # the folder may have changed while the index was written
        _fsync_dir(tmp)
        if _crash_point is not None:
            _crash_point("before-swap")
        if not os.path.lexists(real):
            os.rename(tmp, real)
        elif _exchange(tmp, real):
            if _crash_point is not None:
                _crash_point("after-swap")
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous index
        else:
            old = real.parent / f".{real.name}.old-{_owner_tag()}"
            os.rename(real, old)
            if _crash_point is not None:
                _crash_point("between-renames")
            os.rename(tmp, real)
            if _crash_point is not None:
                _crash_point("after-swap")
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(real.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- params and checksums --------------------------------------------------------------------------
def _edges(f: Path, size: int) -> tuple[str, str]:
    with open(f, "rb") as fh:
        head = fh.read(EDGE)
        if size > EDGE:
            fh.seek(max(size - EDGE, EDGE))
            tail = fh.read(EDGE)
        else:
            tail = b""
    return hashlib.sha256(head).hexdigest()[:32], hashlib.sha256(tail).hexdigest()[:32]


def file_sha256(f: str | Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while True:
            b = fh.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_record(f: Path) -> dict[str, Any]:
    """Size, head/tail hashes and full sha256 of one artifact file (what params.json lists)."""
    size = f.stat().st_size
    head, tail = _edges(f, size)
    with open(f, "rb") as fh:  # on disk before the folder is renamed into place
        os.fsync(fh.fileno())
    return {"size": size, "head": head, "tail": tail, "sha256": file_sha256(f)}


def _params_digest(data: Mapping[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "params_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def write_params(folder: Path, params: Mapping[str, Any]) -> None:
    """Write params.json last: the parameters, the corpus this build came from (inside a
    :func:`build_context`, with its manifest.json), and size + checksums of every other file."""
    from . import __version__

    data = {"ragkit_version": __version__, **params}
    ctx = _BUILD.get()
    if ctx and ctx.get("corpus"):
        corpus = dict(ctx["corpus"])
        manifest = corpus.pop("manifest", None)
        if manifest is not None:
            (folder / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
        data["corpus"] = corpus
    files = {}
    for f in sorted(folder.rglob("*")):  # sub-folders too (a sharded index keeps one per shard)
        rel = f.relative_to(folder).as_posix()
        if rel in (PARAMS_FILE, MANIFEST_FILE) or not f.is_file() or f.is_symlink():  # manifest: a reading cache
            continue
        files[rel] = file_record(f)
    data["files"] = files
    data["params_sha256"] = _params_digest(data)
    with open(folder / PARAMS_FILE, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())  # on disk, like every other file, before the folder is swapped in


def verify_mode(verify: str | None = None) -> str:
    mode = (verify or os.environ.get("RAGKIT_VERIFY") or "fast").strip().lower()
    if mode not in VERIFY_MODES:
        raise ConfigError(f"index verification mode {mode!r} (RAGKIT_VERIFY or verify=) is not one of "
                          f"{', '.join(VERIFY_MODES)}.")
    return mode


def verify_files(folder: Path, params: Mapping[str, Any], verify: str | None = None) -> None:
    """Check every file params.json lists: size and head/tail hashes (fast) or every byte (full)."""
    mode = verify_mode(verify)
    files = params.get("files")
    if mode == "off" or files is None:
        return
    if not isinstance(files, dict):
        raise IndexArtifactError(f"{folder / PARAMS_FILE}: corrupt file list; rebuild the index.")
    for name, rec in files.items():
        f = folder / name
        parts = name.split("/") if isinstance(name, str) else [""]
        if not isinstance(rec, dict) or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise IndexArtifactError(f"{folder / PARAMS_FILE}: corrupt entry for {name!r}; rebuild the index.")
        try:
            size = f.stat().st_size
        except OSError:
            raise IndexArtifactError(f"{f}: missing from the index folder; rebuild the index "
                                     f"(`ragkit index PIPELINE.yaml`).") from None
        if size != rec.get("size"):
            raise IndexArtifactError(f"{f}: {size} bytes, the index wrote {rec.get('size')} (truncated or "
                                     f"modified); rebuild the index (`ragkit index PIPELINE.yaml`).")
        try:
            if mode == "full":
                ok = file_sha256(f) == rec.get("sha256")
            else:
                ok = _edges(f, size) == (rec.get("head"), rec.get("tail"))
        except OSError as exc:
            raise IndexArtifactError(f"{f}: unreadable ({exc}); rebuild the index.") from None
        if not ok:
            raise IndexArtifactError(f"{f}: contents differ from what the index wrote (checksum mismatch, "
                                     f"{mode} check); the file is corrupt or was modified. Rebuild the index "
                                     f"(`ragkit index PIPELINE.yaml`).")


def read_params(folder: str | Path, *, expect_key: str | None = None, verify: str | None = None,
                required: Iterable[str] = ()) -> dict[str, Any]:
    """Read and check an index folder's params.json and verify its files (see :func:`verify_files`)."""
    folder = Path(folder)
    f = folder / PARAMS_FILE
    if not os.path.lexists(folder):
        recover(folder)
    if not folder.exists():
        raise IndexArtifactError(f"{folder}: no index here. Build it first (`ragkit index PIPELINE.yaml`).")
    if not folder.is_dir():
        raise IndexArtifactError(f"{folder}: is a file, not an index folder; point the retriever at the folder "
                                 f"the indexer wrote.")
    recover(folder)  # dead writers' leftovers beside it (cheap: one listdir)
    if not f.exists():
        raise IndexArtifactError(f"{folder}: not a ragkit index ({PARAMS_FILE} missing); rebuild it.")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IndexArtifactError(f"{f}: corrupt index parameters ({exc}); rebuild the index.") from None
    if not isinstance(data, dict):
        raise IndexArtifactError(f"{f}: corrupt index parameters (a JSON {type(data).__name__}, expected an "
                                 f"object); rebuild the index.")
    if "params_sha256" in data and data["params_sha256"] != _params_digest(data):
        raise IndexArtifactError(f"{f}: the parameters were modified after the index was written (checksum "
                                 f"mismatch); rebuild the index rather than editing {PARAMS_FILE}.")
    if not isinstance(data.get("stage"), str):
        raise IndexArtifactError(f"{f}: corrupt index parameters (no 'stage'); rebuild the index.")
    if expect_key is not None and data.get("stage") != expect_key:
        raise IndexArtifactError(f"{folder}: index was built by '{data.get('stage')}', expected '{expect_key}'. "
                                 f"Point the retriever at an index built by '{expect_key}', or rebuild it.")
    missing = [k for k in required if k not in data]
    if missing:
        raise IndexArtifactError(f"{f}: corrupt index parameters (missing {', '.join(missing)}); rebuild the index.")
    verify_files(folder, data, verify)
    return data


@contextlib.contextmanager
def artifact_errors(folder: Path, what: str = "index") -> Iterator[None]:
    """Turn any unexpected failure while reading an index folder into an IndexArtifactError."""
    try:
        yield
    except IndexArtifactError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, EOFError, UnicodeDecodeError,
            OverflowError, MemoryError, RuntimeError, OSError) as exc:
        raise IndexArtifactError(f"{folder}: corrupt {what} ({type(exc).__name__}: {exc}); rebuild the index "
                                 f"(`ragkit index PIPELINE.yaml`).") from None


def check_params(folder: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """Raise IndexArtifactError listing every parameter that differs."""
    diffs = [f"{k}: index has {stored.get(k)!r}, pipeline asks for {v!r}"
             for k, v in wanted.items() if stored.get(k) != v]
    if diffs:
        raise IndexArtifactError(f"{folder}: index built with other parameters ({'; '.join(diffs)}). "
                                 f"Rebuild it with `ragkit index` or change the pipeline.")


def load_array(folder: Path, name: str, mmap: bool = False, *, dtype: Any = None, ndim: int = 1) -> np.ndarray:
    """Load one .npy file; a missing or corrupt file, or one of another dtype/rank, is an IndexArtifactError."""
    f = folder / name
    try:
        a = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 -- numpy's header parser raises many kinds on a damaged file
        raise IndexArtifactError(f"{f}: missing or corrupt index array ({type(exc).__name__}: {exc}); rebuild the "
                                 f"index.") from None
    if not isinstance(a, np.ndarray) or a.ndim != ndim or (dtype is not None and a.dtype != np.dtype(dtype)):
        raise IndexArtifactError(f"{f}: corrupt index array ({getattr(a, 'dtype', '?')}, "
                                 f"{getattr(a, 'ndim', '?')}-d; expected {np.dtype(dtype) if dtype else 'any'}, "
                                 f"{ndim}-d); rebuild the index.")
    return a


def check_rows(folder: Path, name: str, rows: np.ndarray, n: int) -> None:
    """Raise IndexArtifactError when row numbers read from ``name`` fall outside [0, n)."""
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise IndexArtifactError(f"{folder / name}: row number out of range (index has {n} rows); the file is "
                                 f"corrupt. Rebuild the index.")


class DocStore:
    """Ids, texts and titles of indexed units: one UTF-8 blob + offsets, memory-mapped on load."""

    def __init__(self, ids: list[str], doc_ids: list[str], blob: Any, offsets: np.ndarray,
                 titles: list[str | None] | None = None, folder: Path | None = None) -> None:
        self.ids, self.doc_ids, self._blob, self._offsets = ids, doc_ids, blob, offsets
        self.titles = titles
        self.folder = folder

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, i: int) -> str:
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        try:
            return bytes(self._blob[a:b]).decode("utf-8")
        except UnicodeDecodeError as exc:
            where = self.folder / "texts.bin" if self.folder else "texts.bin"
            raise IndexArtifactError(f"{where}: passage #{i + 1} is not valid UTF-8 (byte {a + exc.start}); the "
                                     f"file is corrupt. Rebuild the index.") from None

    def title(self, i: int) -> str | None:
        return self.titles[i] if self.titles else None

    @staticmethod
    def write(folder: Path, ids: list[str], doc_ids: list[str], texts: list[str],
              titles: list[str | None] | None = None) -> None:
        enc = [t.encode("utf-8") for t in texts]
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in enc], out=offsets[1:])
        with open(folder / "texts.bin", "wb") as f:
            for e in enc:
                f.write(e)
        np.save(folder / "text_offsets.npy", offsets)
        meta = {"ids": ids, "doc_ids": doc_ids if doc_ids != ids else None,
                "titles": titles if titles and any(titles) else None}
        (folder / "docstore.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "DocStore":
        meta_f, blob_f = folder / "docstore.json", folder / "texts.bin"
        try:
            meta = json.loads(meta_f.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise IndexArtifactError(f"{meta_f}: missing or corrupt document store ({exc}); rebuild the index.") from None
        try:
            size = blob_f.stat().st_size
            blob = np.memmap(blob_f, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        except (OSError, ValueError) as exc:
            raise IndexArtifactError(f"{blob_f}: missing or unreadable ({exc}); rebuild the index.") from None
        ids = meta.get("ids") if isinstance(meta, dict) else None
        doc_ids = (meta.get("doc_ids") or ids) if isinstance(meta, dict) else None
        titles = meta.get("titles") if isinstance(meta, dict) else None
        ok = (isinstance(ids, list) and all(isinstance(x, str) for x in ids)
              and isinstance(doc_ids, list) and len(doc_ids) == len(ids) and all(isinstance(x, str) for x in doc_ids)
              and (titles is None or (isinstance(titles, list) and len(titles) == len(ids)
                                      and all(t is None or isinstance(t, str) for t in titles))))
        if not ok:
            raise IndexArtifactError(f"{meta_f}: corrupt document store (ids, doc_ids or titles malformed); "
                                     f"rebuild the index.")
        offsets = load_array(folder, "text_offsets.npy", dtype=np.int64)
        if len(offsets) != len(ids) + 1:
            raise IndexArtifactError(f"{folder}: document store is inconsistent ({len(ids)} ids, "
                                     f"{len(offsets) - 1} texts); rebuild the index.")
        if int(offsets[0]) != 0 or int(offsets[-1]) != size or (len(offsets) > 1 and bool(np.any(np.diff(offsets) < 0))):
            raise IndexArtifactError(f"{folder / 'text_offsets.npy'}: text offsets do not fit texts.bin ({size} "
                                     f"bytes; offsets end at {int(offsets[-1])}); one of the two files is corrupt "
                                     f"or truncated. Rebuild the index.")
        return cls(ids, doc_ids, blob, offsets, titles, folder)


# -- sharded index folders ------------------------------------------------------------------------
#
# A sharded index is still one index folder, written with :func:`atomic_folder`: its top-level
# ``params.json`` (with ``"sharded": true``), the global data every shard shares (BM25: the
# vocabulary and global statistics), one sub-folder per shard and ``shards.json``, the manifest.
# Every shard folder carries ``shard.json`` naming the build it belongs to; the manifest is written
# last inside the temporary folder and the folder is renamed into place in one step, so all shards
# are committed together or not at all.

SHARD_FILE = "shard.json"
SHARD_LAYOUT = "ragkit-shards"
SHARD_LAYOUT_VERSION = 1


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / SHARDS_FILE).exists()


def write_shard_manifest(folder: Path, stage: str, build_id: str, shards: list[Mapping[str, Any]],
                         extra: Mapping[str, Any] | None = None) -> None:
    """Write each shard's ``shard.json`` and the folder's manifest (call last, inside atomic_folder)."""
    from . import __version__

    for i, s in enumerate(shards):
        sdata = {"layout": SHARD_LAYOUT, "layout_version": SHARD_LAYOUT_VERSION, "build_id": build_id,
                 "stage": stage, "shard": i, "num_shards": len(shards), "count": s["count"]}
        (folder / s["name"] / SHARD_FILE).write_text(json.dumps(sdata, indent=2), encoding="utf-8")
    data = {"layout": SHARD_LAYOUT, "layout_version": SHARD_LAYOUT_VERSION, "ragkit_version": __version__,
            "stage": stage, "build_id": build_id, "num_shards": len(shards),
            "total": int(sum(s["count"] for s in shards)), "shards": [dict(s) for s in shards], **(extra or {})}
    (folder / SHARDS_FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")


def read_shard_manifest(folder: str | Path, *, expect_stage: str | None = None,
                        expect_shards: int | None = None) -> dict[str, Any]:
    """Read and check a sharded index's manifest and every shard's ``shard.json``.

    Errors (IndexArtifactError) for: a layout this ragkit does not read, a shard folder missing or
    belonging to another build (shards mixed from different builds or ragkit versions), and a shard
    count other than ``expect_shards`` (a retriever told another layout)."""
    folder = Path(folder)
    f = folder / SHARDS_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexArtifactError(f"{folder}: not a sharded index ({SHARDS_FILE} missing).") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IndexArtifactError(f"{f}: corrupt shard manifest ({exc}); rebuild the index.") from None
    if not isinstance(data, dict) or data.get("layout") != SHARD_LAYOUT:
        raise IndexArtifactError(f"{f}: unknown shard layout {data.get('layout') if isinstance(data, dict) else data!r}"
                                 f"; expected '{SHARD_LAYOUT}'. Rebuild the index.")
    if data.get("layout_version") != SHARD_LAYOUT_VERSION:
        raise IndexArtifactError(f"{f}: shard layout version {data.get('layout_version')!r} (written by ragkit "
                                 f"{data.get('ragkit_version')}), this ragkit reads version {SHARD_LAYOUT_VERSION}. "
                                 f"Rebuild the index with this ragkit.")
    if expect_stage is not None and data.get("stage") != expect_stage:
        raise IndexArtifactError(f"{folder}: sharded index was built by '{data.get('stage')}', expected "
                                 f"'{expect_stage}'.")
    n = data.get("num_shards")
    shards = data.get("shards") or []
    if not isinstance(n, int) or n != len(shards) or n < 1:
        raise IndexArtifactError(f"{f}: manifest lists {len(shards)} shards but says num_shards={n!r}; rebuild.")
    if expect_shards is not None and expect_shards != n:
        raise IndexArtifactError(f"{folder}: the index has {n} shards, the retriever was told shards={expect_shards}. "
                                 f"Rebuild the index with {expect_shards} partitions or set shards: {n} "
                                 f"(or leave 'shards' unset to accept the index's layout).")
    for i, s in enumerate(shards):
        sf = folder / str(s.get("name")) / SHARD_FILE
        try:
            sd = json.loads(sf.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise IndexArtifactError(f"{sf}: shard #{i} is missing or corrupt ({exc}); rebuild the index.") from None
        if sd.get("layout_version") != SHARD_LAYOUT_VERSION or sd.get("build_id") != data.get("build_id") \
                or sd.get("shard") != i or sd.get("count") != s.get("count"):
            raise IndexArtifactError(
                f"{sf}: shard #{i} does not belong to this index (shard build {sd.get('build_id')!r}, layout "
                f"version {sd.get('layout_version')!r}, position {sd.get('shard')!r}; the manifest says build "
                f"{data.get('build_id')!r}, version {SHARD_LAYOUT_VERSION}, position {i}). Shards from different "
                f"builds or ragkit versions cannot be mixed; rebuild the index.")
    return data
