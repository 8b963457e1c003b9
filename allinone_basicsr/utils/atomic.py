"""Writes that never leave half a file: into a temporary file beside the target, synced, then renamed over it."""
import os


def atomic_write(path, write, tmp=None):
    """Call ``write(f)`` on a binary file that becomes ``path`` only once complete (a crash or a kill leaves the old
    file, or none). ``tmp`` names the temporary file (default ``<path>.tmp<pid>``, which the training's start-up
    cleaning recognises); it is removed whatever happens. The rename itself is made durable where the OS allows."""
    tmp = tmp or f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
    finally:
        if os.path.lexists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass
