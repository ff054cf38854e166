"""Root working on a service's state directory: whose files it reads and writes.

The systemd unit runs the router as a DynamicUser and the container as user 10001, so
the state directory and everything in it belong to that user. An operator runs
`sudo wgslirp peer add phone`; dropping to the service's user instead is not possible
with DynamicUser (its directory sits under /var/lib/private, 0700 root, which only the
service's own mount namespace opens). So root stays root and follows two rules:

- a file the directory's owner owns is as trusted as one root owns (that user can
  replace anything in its directory anyway; the key and peers files refuse every other
  owner, as before);
- a file root creates there is given to the directory's owner before it is published,
  so the router, running as that user, can still read its peers file and keys.

Created files are opened with O_EXCL (a fresh inode), so the owner of the directory
cannot make root chown or truncate something else through a link planted there. Anyone
but root, or root in its own directory, changes nothing here.
"""

from __future__ import annotations

import os

__all__ = ["adopted_owner", "give_to_owner", "trusted_owner"]


def adopted_owner(directory: str) -> tuple[int, int] | None:
    """(uid, gid) for files root creates in `directory`, or None if nothing is adopted."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(directory)
    except OSError:
        return None
    if st.st_uid == 0:
        return None
    return st.st_uid, st.st_gid


def trusted_owner(uid: int, directory: str) -> bool:
    """May a key or peers file in `directory` owned by `uid` be used?"""
    if uid == os.geteuid():
        return True
    owner = adopted_owner(directory)
    return owner is not None and uid == owner[0]


def give_to_owner(fd: int, directory: str) -> None:
    """Hand a file root just created (O_EXCL) in `directory` to the directory's owner."""
    owner = adopted_owner(directory)
    if owner is not None:
        os.fchown(fd, *owner)
