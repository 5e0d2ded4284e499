"""Writing outputs so that nothing a user holds is destroyed, hidden or half-written.

Every file retwin writes goes through :func:`atomic_write`: the bytes go to a temporary
sibling (``.NAME.<random>.tmp``), are flushed to disk, and the file is renamed onto its name,
so a reader sees the old file or the new one, never a part of one.

Outputs at a path a user names follow two rules, checked before any work is done
(``check_output_file``, ``check_output_dir``) and again when the output is put in place:

- a **file** (:func:`write_output_file`: ``retwin schema -o``, ``report --html``): written
  where nothing is; an existing file is replaced only with ``force``; never onto a folder, a
  symbolic link or anything but a regular file.
- a **folder** (:func:`output_dir`: ``retwin run --out``): written where nothing is or in
  place of an empty folder; a folder that holds an earlier output of the same kind and
  nothing else (told by ``foreign``, e.g. from its manifest) is replaced only with ``force``,
  and only once the new one is complete; anything else (a file, a folder holding other
  things, a link) is refused.

Missing folders above the target are created, and removed again when the output fails.
A refusal or a failure of the file system raises :class:`~retwin.errors.OutputError` naming
the path and the reason, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Literal

from retwin.errors import OutputError

__all__ = [
    "TEMP_SUFFIX",
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "check_parents",
    "is_temp_name",
    "make_parents",
    "new_temp_file",
    "output_dir",
    "place_file",
    "remove_created",
    "write_output_file",
]

TEMP_SUFFIX = ".tmp"
_HEX = 8  # random hex digits in a temporary name

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2

PathArg = str | os.PathLike[str]
Writer = Callable[[IO[bytes]], Any]


# --- renames -----------------------------------------------------------------------------


@functools.cache
def _renameat2_fn() -> Any:
    """Linux's ``renameat2`` (atomic swap and no-replace renames), or None where absent."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Rename with ``flags``; False when this system or file system cannot (the caller then
    falls back to plain renames), OSError when the rename itself fails."""
    fn = _renameat2_fn()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename file ``src`` to ``dst`` unless something is at ``dst`` (FileExistsError)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    try:
        os.link(src, dst)  # a hard link never replaces: it fails when dst exists
    except FileExistsError:
        raise
    except OSError as exc:  # no hard links here: check, then rename
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                             errno.EXDEV):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _swap_dirs(new: Path, target: Path) -> Path:
    """Put folder ``new`` in place of folder ``target``; returns where the old one now is
    (a temporary sibling, for the caller to delete). The swap is atomic where the system
    can exchange two names; elsewhere ``target`` is missing for the moment between two
    renames, and is put back if the second fails."""
    if _renameat2(new, target, _RENAME_EXCHANGE):
        return new
    old = _temp_path(target.parent, target.name)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


# --- temporary siblings and syncing --------------------------------------------------------


def _temp_path(parent: Path, name: str) -> Path:
    # a short stem keeps the temporary name within the file system's limit on names
    return parent / f".{name[:40]}.{secrets.token_hex(_HEX // 2)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for the names of retwin's temporary files and folders (``.NAME.<hex>.tmp``)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    stem = name[1:-len(TEMP_SUFFIX)]
    _, dot, tail = stem.rpartition(".")
    return bool(dot) and len(tail) == _HEX and all(c in "0123456789abcdef" for c in tail)


def new_temp_file(parent: Path, name: str) -> tuple[int, Path]:
    """A new temporary file in ``parent`` named for ``name`` (``.NAME.<hex>.tmp``), made with
    the usual mode (0666 less the umask): its descriptor, open for writing, and its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = _temp_path(parent, name)
        try:
            return os.open(tmp, flags, 0o666), tmp  # the usual mode (umask applies)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def _new_temp_dir(parent: Path, name: str) -> Path:
    for _ in range(100):
        tmp = _temp_path(parent, name)
        try:
            os.mkdir(tmp, 0o777)  # the usual mode (umask applies)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (where the system can sync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _syncers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="retwin-fsync")


# a forked child has none of the parent's threads: it makes a pool of its own
os.register_at_fork(after_in_child=_syncers.cache_clear)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, then the folders, to disk. The files are flushed
    side by side: the file system commits them together (one after the other, each waits
    for a commit of its own)."""
    for dirpath, _, filenames in os.walk(root):
        paths = [os.path.join(dirpath, f) for f in filenames]
        if len(paths) > 1:
            for _ in _syncers().map(_fsync_file, paths):  # raises the first failure
                pass
        elif paths:
            _fsync_file(paths[0])
        _fsync_dir(Path(dirpath))


def atomic_write(target: PathArg, data: bytes | Writer, *, tmp_dir: PathArg | None = None,
                 replace: bool = True) -> None:
    """Write ``target`` whole or not at all.

    ``data`` is the bytes, or a function that writes them to a binary file. They go to a
    temporary file in ``tmp_dir`` (default: beside ``target``; it must be on the same file
    system), are flushed to disk, and the file is renamed onto ``target``; nothing is left
    behind when writing fails or is interrupted. An existing ``target`` is replaced (keeping
    its permissions) unless ``replace`` is False: then FileExistsError, and it is untouched.
    """
    target = Path(target)
    fd, tmp = new_temp_file(Path(tmp_dir) if tmp_dir is not None else target.parent,
                             target.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            _replace(tmp, target)
        else:
            _rename_noreplace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``, an existing file's permissions kept."""
    with contextlib.suppress(OSError):
        st = os.stat(target)
        if stat.S_ISREG(st.st_mode):
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.replace(tmp, target)


def place_file(tmp: PathArg, target: PathArg) -> None:
    """Put ``tmp``, a whole temporary file on ``target``'s file system (not flushed yet), at
    ``target``: flushed to disk, renamed onto it (an existing file's permissions kept), the
    rename made durable. :func:`atomic_write` when the file was written elsewhere (another
    process)."""
    target = Path(target)
    _fsync_file(os.fspath(tmp))
    _replace(Path(tmp), target)
    _fsync_dir(target.parent)


# --- checks --------------------------------------------------------------------------------


def _target(path: PathArg) -> Path:
    text = os.fspath(path)
    if text == "":
        raise OutputError(text, "is empty; name a file or folder")
    if "\x00" in text:
        raise OutputError(text, "contains a NUL character")
    # lexically absolute: "a/.." is the current folder, a name ending in "/" the name itself
    return Path(os.path.abspath(text))


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _why_not_writable(folder: Path) -> str:
    with contextlib.suppress(OSError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    return os.strerror(errno.EACCES)


def _some(names: list[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_parents(path: PathArg) -> list[Path]:
    """The missing folders above the output ``path``, outermost first; OutputError when a
    file (or a broken link) is in the way or the nearest existing folder is not writable."""
    target = _target(path)
    missing: list[Path] = []
    p = target.parent
    while True:
        try:
            st = os.stat(p)  # follows links: a link to a folder is a folder
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(p):
                raise OutputError(path, f"{p} is a broken symbolic link") from None
            missing.append(p)
            p = p.parent
            continue
        except OSError as exc:
            raise OutputError(path, f"cannot reach {p}: {_strerror(exc)}") from None
        break
    if not stat.S_ISDIR(st.st_mode):
        kind = "a file" if stat.S_ISREG(st.st_mode) else "something"
        raise OutputError(path, f"{p} is {kind}, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(path, f"cannot write in {p}: {_why_not_writable(p)}")
    return missing[::-1]


def make_parents(path: PathArg) -> list[Path]:
    """Create the missing folders above ``path``; returns those created, outermost first
    (for :func:`remove_created` should the output fail)."""
    created: list[Path] = []
    for d in check_parents(path):
        try:
            os.mkdir(d)
        except FileExistsError:
            if d.is_dir():
                continue
            remove_created(created)
            raise OutputError(path, f"{d} is a file, not a folder") from None
        except OSError as exc:
            remove_created(created)
            raise OutputError(path, f"cannot create {d}: {_strerror(exc)}") from None
        created.append(d)
    return created


def remove_created(created: list[Path]) -> None:
    """Remove folders made by :func:`make_parents`, innermost first, while they are empty."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            return


FileState = Literal["new", "replace"]
DirState = Literal["new", "empty", "ours"]


def check_output_file(path: PathArg, *, force: bool = False) -> FileState:
    """Whether a file can be written at ``path``: ``"new"`` (nothing there) or
    ``"replace"`` (a file there and ``force``); OutputError otherwise."""
    target = _target(path)
    if os.fspath(path).endswith(("/", os.sep)):
        raise OutputError(path, "ends with a slash, as a folder does; name a file")
    check_parents(path)
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return "new"
    except OSError as exc:
        raise OutputError(path, f"cannot look at it: {_strerror(exc)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(path, "is a symbolic link; name the file itself")
    if stat.S_ISDIR(st.st_mode):
        raise OutputError(path, "is a folder; name a file")
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(path, "exists and is not a regular file")
    if not force:
        raise OutputError(path, "exists", replaceable=True)
    return "replace"


Foreign = Callable[[Path], list[str]]


def check_output_dir(path: PathArg, *, foreign: Foreign, force: bool = False,
                     what: str = "output") -> DirState:
    """Whether a folder can be put at ``path``: ``"new"`` (nothing there), ``"empty"`` (an
    empty folder there) or ``"ours"`` (an earlier ``what`` there, and ``force``);
    OutputError otherwise. ``foreign(folder)`` names the entries of a folder that are not
    part of an earlier ``what`` (all of them when it is none)."""
    target = _target(path)
    check_parents(path)
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return "new"
    except OSError as exc:
        raise OutputError(path, f"cannot look at it: {_strerror(exc)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(path, "is a symbolic link; name the folder itself")
    if not stat.S_ISDIR(st.st_mode):
        kind = "a file" if stat.S_ISREG(st.st_mode) else "something"
        raise OutputError(path, f"is {kind}, not a folder; name a new or empty folder")
    try:
        names = os.listdir(target)
    except OSError as exc:
        raise OutputError(path, f"cannot read it: {_strerror(exc)}") from None
    if not names:
        return "empty"
    others = foreign(target)
    if others:
        raise OutputError(path, f"is a folder that holds other things ({_some(others)}); "
                                "name a new or empty folder")
    if not force:
        raise OutputError(path, f"holds an earlier {what}", replaceable=True)
    return "ours"


# --- writing outputs -----------------------------------------------------------------------


def write_output_file(path: PathArg, data: bytes | str, *, force: bool = False) -> Path:
    """Write the file ``path`` atomically under the rule for files (see the module); returns
    the (absolute) path written."""
    state = check_output_file(path, force=force)
    target = _target(path)
    created = make_parents(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        atomic_write(target, payload, replace=state == "replace")
    except FileExistsError:
        remove_created(created)
        raise OutputError(path, "appeared while it was being written", replaceable=True) \
            from None
    except OSError as exc:
        remove_created(created)
        raise OutputError(path, f"cannot write it: {_strerror(exc)}") from None
    except BaseException:
        remove_created(created)
        raise
    return target


@contextlib.contextmanager
def output_dir(path: PathArg, *, foreign: Foreign, force: bool = False,
               what: str = "output") -> Iterator[Path]:
    """Build a folder output: yields an empty temporary sibling of ``path`` to fill; when the
    block ends it is flushed to disk and put at ``path`` under the rule for folders (see the
    module). When the block fails, the temporary folder (and any folder made above ``path``)
    is removed and ``path`` is as it was; an OSError becomes an OutputError."""
    check_output_dir(path, foreign=foreign, force=force, what=what)
    target = _target(path)
    created = make_parents(path)
    try:
        tmp = _new_temp_dir(target.parent, target.name)
    except OSError as exc:
        remove_created(created)
        raise OutputError(path, f"cannot write in {target.parent}: {_strerror(exc)}") \
            from None
    old: Path | None = None
    try:
        yield tmp
        _fsync_tree(tmp)
        state = check_output_dir(path, foreign=foreign, force=force, what=what)  # still so?
        if state == "ours":
            old = _swap_dirs(tmp, target)
        elif state == "empty":
            os.rename(tmp, target)  # replaces an empty folder, fails on any other
        else:
            try:
                renamed = _renameat2(tmp, target, _RENAME_NOREPLACE)
            except FileExistsError:
                os.rename(tmp, target)  # an empty folder appeared meanwhile
            else:
                if not renamed:
                    os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        if isinstance(exc, OSError):
            raise OutputError(path, f"cannot write it: {_strerror(exc)}") from None
        raise
    if old is not None:  # the earlier output, replaced: now only a temporary sibling
        shutil.rmtree(old, ignore_errors=True)
