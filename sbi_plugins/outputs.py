"""Writing results so that none is ever lost or overwritten.

An output is checked before any work (it must not exist, and its directory must
take a new file), then written to a unique temporary file beside it and linked to
its final name, which fails if the name appeared meanwhile (a second run with the
same `--out`): the result is then kept under another name that the error reports.
SIGTERM and Ctrl-C remove the temporary file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sbi_plugins.errors import SbiPluginsError


class OutputError(SbiPluginsError):
    """An output cannot be written where asked, or its name was taken meanwhile."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `finally` blocks clean up."""


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(
    directory: str | Path,
    target: str | Path | None = None,
    *,
    instead: str = "choose another --out",
) -> None:
    """Refuse, before any work, a directory that cannot take a new file: a file in
    the way, a read-only or pseudo file system. A missing directory is fine if its
    nearest existing ancestor takes files (it is created when the output is
    written)."""
    directory = Path(directory)
    target = Path(target) if target is not None else directory
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise OutputError(
            f"cannot write {target}: {existing} is not a directory; {instead} "
            "(nothing was run)"
        )
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".sbi-plugins-probe."):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputError(
            f"cannot write {target}: {existing} does not take new files ({reason}); "
            f"{instead} (nothing was run)"
        ) from exc


def check_new_file(path: str | Path) -> None:
    """Refuse, before any work, an output file that exists or cannot be written."""
    path = Path(path)
    if os.path.lexists(path):
        raise OutputError(
            f"{path} exists; choose another --out (nothing was overwritten)"
        )
    check_writable_dir(path.parent, path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_path(directory: Path, name: str) -> Path:
    """A new, unique, hidden file that keeps the final suffix (writers such as
    matplotlib pick the format from it)."""
    stem, suffix = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{stem}.", suffix=f".partial{suffix}"
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _link_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` unless that name exists (FileExistsError)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # no hard links here (some network and FAT file systems): reserve the
        # name by exclusive creation, then move the result onto it
        with open(path, "x"):
            pass
        try:
            os.replace(tmp, path)
        except OSError:
            os.unlink(path)
            raise
        return
    os.unlink(tmp)


def _keep_elsewhere(tmp: Path, path: Path) -> Path:
    """Move a finished result to the first free `NAME-N.ext` beside `path`."""
    stem, suffix = os.path.splitext(path.name)
    for n in itertools.count(1):
        other = path.with_name(f"{stem}-{n}{suffix}")
        try:
            _link_new(tmp, other)
        except FileExistsError:
            continue
        return other
    raise AssertionError("unreachable")


def _write_fallback(path: Path, write: Callable[[Path], object]) -> Path:
    """Keep a result whose directory stopped taking files (removed, full, made
    read-only during the run) in the system's temporary directory."""
    stem, suffix = os.path.splitext(path.name)
    fd, kept = tempfile.mkstemp(prefix=f"{stem}-", suffix=suffix)
    os.close(fd)
    with terminate_as_interrupt():
        try:
            write(Path(kept))
        except BaseException:
            os.unlink(kept)
            raise
    return Path(kept)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in this process, so temporary
    files are removed as on Ctrl-C. Only from the main thread, and only where
    SIGTERM had its default action; a forked child that inherits the handler
    dies of SIGTERM as usual (pools terminate their workers that way)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def write_new(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a unique temporary file beside `path`, then give it the
    name `path`; an existing `path` is never replaced. Returns `path`.

    If `path` appeared while this ran, the result is kept as `NAME-N.ext` and an
    `OutputError` names both; if the directory cannot take the file any more, the
    result is kept in the system's temporary directory and the error says where.
    The temporary file is removed on any error, Ctrl-C or SIGTERM."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path.parent, path.name)
    except OSError as exc:
        kept = _write_fallback(path, write)
        raise OutputError(
            f"cannot write {path} ({exc.strerror or exc}); the result was kept in "
            f"{kept}"
        ) from exc
    keep = False
    with terminate_as_interrupt():
        try:
            write(tmp)
            try:
                _link_new(tmp, path)
            except FileExistsError:
                keep = True
                other = _keep_elsewhere(tmp, path)
                raise OutputError(
                    f"{path} appeared while this ran (another run with the same "
                    f"--out?) and was not overwritten; this result was written to "
                    f"{other}"
                ) from None
            except OSError as exc:
                keep = True
                raise OutputError(
                    f"cannot name the result {path} ({exc.strerror or exc}); it was "
                    f"kept in {tmp}"
                ) from exc
        finally:
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    return path
